"""A gallery: the embeddings a search looks among, with their labels, files and label fields, from any source —
built from arrays (:meth:`Gallery.from_arrays`), read from an npz of ``simlearn-embed`` (:func:`gallery_from_npz`),
a LanceDB table (:func:`gallery_from_database`) or a folder of images, embedded once and cached
(:func:`gallery_from_folder`, :mod:`simlearn.retrieval.cache`) — and the one search of a gallery that chooses the
backend (:func:`run_search`: exact, through a saved faiss index from a size on, or through LanceDB).

**Code galleries.** The gallery of a hashing model (``head=hash``) holds its packed binary codes (``codes``: from
the npz of ``simlearn-embed``, or packed from a folder's embeddings) beside the float relaxation, and is searched by
Hamming distance through a :class:`~simlearn.retrieval.codes.CodeIndex` (:func:`search_index`): the exact search of
the ±1 sign vectors, which ranks as the Hamming search does (ties to the lower gallery index), each result's cosine
that of the signs, ``1 - 2 h / bits``; with ``rerank=N`` the N Hamming-nearest are re-ranked by the float
embeddings. A LanceDB table of codes is searched by LanceDB's Hamming search (``db_search``: a full scan, exact, or
its hamming index; ``memory``: by ``code_index`` as an npz). A code gallery with a float model, or a float gallery
with a hashing model, is refused in one line."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from simlearn.data.images import find_images, folder_label
from simlearn.errors import UserError
from simlearn.fields import NOT_LABEL_FIELDS
from simlearn.inference import EmbeddedFiles, InferenceModel
from simlearn.retrieval import vectordb
from simlearn.retrieval.cache import CACHE_VERSION, file_stats, fingerprint, load_fingerprinted, save_fingerprinted
from simlearn.retrieval.candidates import CandidateSource, gallery_index
from simlearn.retrieval.codes import CodeIndex, code_index, encoder_code_bits, pack_codes, unpack_signs
from simlearn.retrieval.exact import top_k
from simlearn.retrieval.faiss_lib import faiss_installed
from simlearn.retrieval.inputs import PreparedGallery, prepare_gallery
from simlearn.retrieval.postprocess import PostProcessor, drop_rows, postprocessed_top_k
from simlearn.retrieval.result import result_row

log = logging.getLogger(__name__)

__all__ = [
    "Gallery",
    "check_gallery_model",
    "diverged_hint",
    "first_rows",
    "gallery_from_arrays",
    "gallery_from_database",
    "gallery_from_folder",
    "gallery_from_npz",
    "load_gallery",
    "non_finite_rows",
    "postprocessed_method",
    "EXACT_METHOD",
    "RetrievalResult",
    "run_search",
    "search_gallery",
    "search_index",
]


@dataclass
class Gallery:
    """The embeddings (N, d) of the gallery's items as the model made them (the search scales them to unit length
    itself and re-scores near-ties from them in float64), with their labels and files when known."""

    embeddings: np.ndarray
    labels: list[str | None] | None
    paths: list[str] | None
    source: Path
    #: where the faiss index of these embeddings is kept (None: nowhere, it is built in memory when needed)
    index_path: Path | None
    skipped: int = 0
    #: the unreadable image files of a folder gallery, left out (``skipped`` of them)
    skipped_files: list[str] = field(default_factory=list)
    root: Path | None = None
    #: how to name items without files (e.g. ``test[17]``: split and dataset index of an npz from simlearn-embed)
    ids: list[str] | None = None
    #: every label field of the items (name → (N,) or (N, m) values), when the gallery came from simlearn-embed
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    #: a search of this gallery outside simlearn (a LanceDB table): :func:`run_search` searches through it
    candidates: CandidateSource | None = None
    #: a hashing model's packed binary codes (N, bits / 8) uint8: the gallery is searched by Hamming distance
    codes: np.ndarray | None = None
    _prepared: PreparedGallery | None = field(default=None, init=False, repr=False)
    _prepared_signs: PreparedGallery | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], source: Path, model: InferenceModel, index_path: Path | None = None
    ) -> Gallery:
        """The gallery of arrays as simlearn-embed writes them (:func:`gallery_from_arrays`)."""
        return gallery_from_arrays(arrays, source, model, index_path)

    def searchable(self) -> PreparedGallery:
        """The embeddings checked and scaled to unit rows once (:func:`prepare_gallery`), so that searching one query
        at a time (a service) costs no pass over the whole gallery per search."""
        if self._prepared is None:
            self._prepared = prepare_gallery(self.embeddings)
        return self._prepared

    def searchable_signs(self) -> PreparedGallery:
        """The ±1 sign vectors of the codes, prepared once: the gallery of the Hamming search (module doc)."""
        if self.codes is None:
            raise ValueError("this gallery holds no binary codes")
        if self._prepared_signs is None:
            self._prepared_signs = prepare_gallery(unpack_signs(self.codes))
        return self._prepared_signs

    @property
    def classes(self) -> set[str]:
        return {label for label in self.labels or [] if label is not None}

    def name(self, i: int) -> str:
        if self.paths is not None:
            path = Path(self.paths[i])
            if self.root is not None and path.is_relative_to(self.root):
                return str(path.relative_to(self.root))
            return str(path)
        return self.ids[i] if self.ids is not None else f"item {i}"


# -- reading a gallery -------------------------------------------------------------------------------------------
def load_gallery(
    spec: str | Path, model: InferenceModel, cfg: DictConfig, *, refuse_other_model: bool = False
) -> Gallery:
    """The gallery named by ``spec``: an npz written by simlearn-embed, a LanceDB database (or table) it wrote
    (``cfg.db_table``, ``cfg.db_search``, ``cfg.db_nprobes``, ``cfg.db_refine_factor``: :func:`gallery_from_database`),
    or a folder of images (embedded now, or read from the cache when its files and the checkpoint are unchanged).
    An npz or table embedded by another model is warned about, or refused with ``refuse_other_model``
    (:func:`check_gallery_model`)."""
    path = Path(str(spec)).expanduser()
    if vectordb.is_database(path):
        return gallery_from_database(path, model, cfg, refuse_other_model=refuse_other_model)
    if path.is_dir():
        return gallery_from_folder(path, model, cfg)
    if path.is_file() and path.suffix.lower() == ".npz":
        return gallery_from_npz(path, model, refuse_other_model=refuse_other_model)
    if path.is_file():
        raise UserError(
            f"gallery={str(spec)!r} is a file but not an .npz; give a folder of images or an npz written by "
            f"simlearn-embed (e.g. gallery=outputs/embed/runs/<run>/test.npz)."
        )
    raise UserError(
        f"gallery={str(spec)!r} does not exist; give a folder of images, an npz from simlearn-embed or the LanceDB "
        f"folder it wrote (simlearn-embed db=PATH)."
    )


#: The npz arrays of simlearn-embed that hold one entry per embedding row, and are read here.
PER_ITEM_ARRAYS = ("labels", "paths", "index")


def first_rows(rows: np.ndarray, shown: int = 5) -> str:
    return ", ".join(str(int(i)) for i in rows[:shown]) + (", …" if len(rows) > shown else "")


def non_finite_rows(embeddings: np.ndarray, block: int = 65536) -> np.ndarray:
    """Indices of the rows holding a NaN or an infinity: their cosine with anything is NaN, which ranks arbitrarily
    and would print as "cos nan, 180°". Checked in blocks of rows: the mask of a million 512-d rows takes 0.5 GB."""
    bad = [
        start + np.flatnonzero(~np.isfinite(embeddings[start : start + block]).all(axis=1))
        for start in range(0, len(embeddings), block)
    ]
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def gallery_from_npz(path: Path, model: InferenceModel, *, refuse_other_model: bool = False) -> Gallery:
    """The gallery of an npz written by simlearn-embed (:func:`gallery_from_arrays` of its arrays)."""
    try:
        arrays = np.load(path, allow_pickle=False)
        loaded = {name: arrays[name] for name in arrays.files}
    except Exception as error:  # zipfile / pickle / value errors of a broken file
        raise UserError(f"gallery={str(path)!r} is not a readable npz file ({error}).") from error
    return gallery_from_arrays(
        loaded, path, model, index_path=path.with_suffix(".faiss"), refuse_other_model=refuse_other_model
    )


def gallery_from_arrays(
    arrays: Mapping[str, np.ndarray],
    source: Path,
    model: InferenceModel,
    index_path: Path | None = None,
    *,
    refuse_other_model: bool = False,
) -> Gallery:
    """The gallery of the arrays of an npz of simlearn-embed (:func:`simlearn.inference.embedding_files.split_arrays`:
    ``embeddings``,
    ``labels`` with ``class_names``, ``paths``, ``index`` and ``split``, the label fields), without a file: refused
    with one message naming ``source`` when they do not fit together (another model's dimension, per-item arrays of
    other lengths, non-finite rows; with ``refuse_other_model``, another model's ``model_digest``: else warned
    about, :func:`check_gallery_model`). ``index_path``: where a faiss index of them may be kept."""
    path = source
    files = set(arrays)
    embeddings = arrays["embeddings"] if "embeddings" in files else None
    per_item = {name: arrays[name] for name in PER_ITEM_ARRAYS if name in files}
    remake = f"re-run simlearn-embed ckpt_path={model.path} to write the gallery anew"
    if embeddings is None or embeddings.ndim != 2:
        raise UserError(
            f"gallery={str(path)!r} holds no 2-D 'embeddings' array (it has {sorted(files)}); use an npz written "
            f"by simlearn-embed."
        )
    if not (np.issubdtype(embeddings.dtype, np.integer) or np.issubdtype(embeddings.dtype, np.floating)):
        raise UserError(f"gallery={str(path)!r} holds 'embeddings' of dtype {embeddings.dtype}, not numbers; {remake}.")
    if len(embeddings) == 0:
        raise UserError(f"gallery={str(path)!r} holds no embeddings (0 rows); {remake}, or embed a non-empty split.")
    digest = str(arrays["model_digest"]) if "model_digest" in files else None
    recorded = str(arrays["ckpt_path"]) if "ckpt_path" in files else None
    if refuse_other_model and digest:  # a recorded digest names the other model, whatever its dimension
        check_gallery_model(f"gallery={str(path)!r}", digest, recorded, model, refuse=True)
    check_pixel_gallery(f"gallery={str(path)!r}", digest, model)
    # first: a gallery of the other kind (codes or floats) is named as such, whatever its dimension
    codes = _checked_codes(arrays.get("codes"), len(embeddings), f"gallery={str(path)!r}", model)
    if embeddings.shape[1] != model.embedding_dim:
        raise UserError(
            f"gallery={str(path)!r} holds {embeddings.shape[1]}-d embeddings but the checkpoint {model.path} makes "
            f"{model.embedding_dim}-d ones: they come from different models. Embed the gallery with this checkpoint "
            f"(simlearn-embed ckpt_path={model.path}) or search with the checkpoint that made it."
        )
    # every per-item array must have one entry per row: a shorter one used to end in an IndexError mid-search
    for name, values in per_item.items():
        if values.ndim != 1:
            raise UserError(
                f"gallery={str(path)!r}: its {name!r} must be 1-D (one entry per embedding row), but has shape "
                f"{values.shape}; {remake}."
            )
    mismatched = [f"{name!r} has {len(v)} entries" for name, v in per_item.items() if len(v) != len(embeddings)]
    if mismatched:
        raise UserError(
            f"gallery={str(path)!r} does not hold one entry per item: {', '.join(mismatched)}, but 'embeddings' has "
            f"{len(embeddings)} rows (was the file changed after simlearn-embed wrote it?); {remake}."
        )
    bad = non_finite_rows(embeddings)
    if len(bad):
        fix = (
            f"{remake[0].upper()}{remake[1:]}; if it gives NaN again, the checkpoint's training diverged: use one from "
            f"before that."
            if _weights_finite(model)
            else diverged_hint(model)
        )
        raise UserError(
            f"gallery={str(path)!r}: {len(bad)} of its {len(embeddings)} embedding rows are not finite (NaN or inf), "
            f"rows {first_rows(bad)}; they have no similarity to rank. {fix}"
        )
    check_gallery_model(f"gallery={str(path)!r}", digest, recorded, model, refuse=refuse_other_model)
    labels = None
    if "labels" in per_item:
        labels = _label_names(per_item["labels"], arrays["class_names"].tolist() if "class_names" in files else [])
        if labels is None:
            raise UserError(
                f"gallery={str(path)!r} holds 'labels' of dtype {per_item['labels'].dtype}; they must be integer "
                f"class ids (named by 'class_names') or strings; {remake}."
            )
    paths = [str(p) for p in per_item["paths"].tolist()] if "paths" in per_item else None
    label_fields = {
        name: arrays[name]
        for name in sorted(files - NOT_LABEL_FIELDS)
        if arrays[name].ndim >= 1 and len(arrays[name]) == len(embeddings)
    }
    ids = None
    if "index" in per_item:
        split = str(arrays["split"]) if "split" in files else ""
        ids = [f"{split}[{i}]" for i in per_item["index"].tolist()]
    return Gallery(
        embeddings=embeddings,
        labels=labels,
        paths=paths,
        source=path,
        index_path=index_path,
        ids=ids,
        fields=label_fields,
        codes=codes,
    )


def _checked_codes(codes: np.ndarray | None, rows: int, where: str, model: InferenceModel) -> np.ndarray | None:
    """A gallery's packed codes, checked against the model: a hashing model needs codes of its bit count, one per
    row; a float model, none. Anything else is one line (a gallery of another model)."""
    bits = encoder_code_bits(getattr(model, "encoder", None))
    if codes is None and bits is None:
        return None
    if codes is None:
        raise UserError(
            f"{where} holds float embeddings only, but ckpt_path={model.path} is a hashing model ({bits}-bit codes, "
            f"searched by Hamming distance): the gallery comes from another model. Embed it with this checkpoint "
            f"(simlearn-embed ckpt_path={model.path}, which writes the codes) or search with the model that made it."
        )
    if bits is None:
        raise UserError(
            f"{where} holds binary codes (a hashing model's), but ckpt_path={model.path} makes float embeddings: "
            f"search it with the head=hash checkpoint that made it, or embed the gallery with this one."
        )
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape != (rows, bits // 8):
        raise UserError(
            f"{where} holds 'codes' of {codes.dtype} {codes.shape}, but {rows} items of the {bits}-bit codes of "
            f"ckpt_path={model.path} are uint8 ({rows}, {bits // 8}); re-run simlearn-embed ckpt_path={model.path}."
        )
    return np.ascontiguousarray(codes)


def gallery_from_database(
    path: Path, model: InferenceModel, cfg: DictConfig, *, refuse_other_model: bool = False
) -> Gallery:
    """The gallery of a LanceDB table written by ``simlearn-embed db=PATH`` (``path``: the database folder, its table
    ``cfg.db_table`` or its only one, or a ``<table>.lance`` folder), searched through LanceDB as ``cfg.db_search``
    says (:func:`simlearn.retrieval.vectordb.candidates`: ``auto``, ``exact``, ``index`` or ``memory``)."""
    contents = vectordb.read_table(path, cfg.get("db_table"))
    where = f"gallery={str(path)!r} (LanceDB table {contents.name!r})"
    if refuse_other_model and contents.model_digest:  # a recorded digest names the other model, whatever its dimension
        check_gallery_model(where, contents.model_digest, contents.ckpt_path, model, refuse=True)
    check_pixel_gallery(where, contents.model_digest, model)
    # a code table (column ``code``) with a float model, or a float table with a hashing one: one line
    codes = _checked_codes(contents.codes, len(contents.embeddings), where, model)
    remake = f"write it anew with simlearn-embed ckpt_path={model.path} db=PATH"
    embeddings = contents.embeddings
    if embeddings.shape[1] != model.embedding_dim:
        raise UserError(
            f"{where} holds {embeddings.shape[1]}-d embeddings but the checkpoint {model.path} makes "
            f"{model.embedding_dim}-d ones: they come from different models. Embed the gallery with this checkpoint "
            f"(simlearn-embed ckpt_path={model.path} db=PATH) or search with the checkpoint that made it."
        )
    bad = non_finite_rows(embeddings)
    if len(bad):
        raise UserError(
            f"{where}: {len(bad)} of its {len(embeddings)} vectors are not finite (NaN or inf), rows "
            f"{first_rows(bad)}; {remake}."
        )
    check_gallery_model(where, contents.model_digest, contents.ckpt_path, model, refuse=refuse_other_model)
    refine = cfg.get("db_refine_factor", 4)
    source = vectordb.candidates(
        contents, str(cfg.get("db_search") or "auto"), int(cfg.get("db_nprobes") or 20), refine
    )
    return Gallery(
        embeddings=embeddings,
        labels=contents.row_class_names,
        paths=contents.paths,
        source=path,
        index_path=None,
        ids=contents.ids,
        fields=contents.fields,
        candidates=source,
        codes=codes,
    )


def check_pixel_gallery(where: str, digest: str | None, model: InferenceModel) -> None:
    """The pixel embedder (:mod:`simlearn.inference.pixels`) takes image files only: no simlearn-embed file holds
    its embeddings, so a stored gallery without its digest is refused in one line that names the images as the fix
    (not a checkpoint to re-embed with, which the pixels have not)."""
    if getattr(model, "kind", None) == "pixels" and digest != model.digest:
        raise UserError(
            f"{where} holds embeddings of a model, not of the pixels (embedder=pixels embeds image files): organise "
            f"the image files themselves with embedder=pixels gallery=FOLDER, or this gallery with the model that "
            f"made it (embedder=model ckpt_path=…)."
        )


def check_gallery_model(
    where: str, digest: str | None, ckpt_path: str | None, model: InferenceModel, *, refuse: bool = False
) -> None:
    """Whether the gallery ``where`` names was embedded by ``model``. With the ``digest`` it records (simlearn-embed
    writes the model's :attr:`~simlearn.inference.InferenceModel.digest`), another model's embeddings are refused in
    one line with ``refuse`` (``simlearn-organise``: its clusters and duplicates would mix two models' spaces), else
    warned about (a search still runs); the same model under another path (a copied checkpoint) passes. Without a
    digest (files written before it was recorded) only the path can tell: another ``ckpt_path`` is warned about."""
    if digest:
        if digest == model.digest:
            return
        ours = model.digest
        if refuse:
            made_by = f" ({ckpt_path})" if ckpt_path else ""
            if model.kind == "pixels":  # no file of pixel embeddings exists: the images themselves are the fix
                raise UserError(
                    f"{where} was embedded by another model (digest {digest[:12]}… vs {ours[:12]}… of "
                    f"embedder=pixels): organise the image files themselves with embedder=pixels gallery=FOLDER, or "
                    f"this gallery with the model that made it (embedder=model ckpt_path=…{made_by})."
                )
            raise UserError(
                f"{where} was embedded by another model (digest {digest[:12]}… vs {ours[:12]}… of "
                f"ckpt_path={model.path}): re-embed it with simlearn-embed ckpt_path={model.path} or organise with "
                f"the model that made it{made_by}."
            )
        log.warning(
            "%s was embedded by another model (digest %s… vs %s… of %s): its similarities to this model's embeddings "
            "mean little; re-embed it with simlearn-embed ckpt_path=%s",
            where, digest[:12], ours[:12], model.path, model.path,
        )  # fmt: skip
        return
    if ckpt_path and Path(ckpt_path) != model.path.resolve():
        log.warning("%s was embedded with %s, not with %s (it records no model digest)", where, ckpt_path, model.path)


def _label_names(labels: np.ndarray, names: list[str]) -> list[str] | None:
    """Integer class ids as their names (the id itself when it has none), strings as they are; None otherwise."""
    if np.issubdtype(labels.dtype, np.integer):
        return [names[i] if 0 <= i < len(names) else str(i) for i in labels.tolist()]
    if labels.dtype.kind in "US":
        return [label.decode() if isinstance(label, bytes) else str(label) for label in labels.tolist()]
    return None


def gallery_from_folder(folder: Path, model: InferenceModel, cfg: DictConfig) -> Gallery:
    """The gallery of a folder of images, embedded by ``model`` on its device (in parts, resumable), or read from
    the cache (``cfg.cache``, ``cfg.cache_dir``) when its files and the model are unchanged."""
    files = find_images(folder)
    if not files:
        raise UserError(
            f"gallery={str(folder)!r} holds no image files ({', '.join(sorted({'.jpg', '.png', '.bmp'}))}, …); "
            f"point it at a folder of images (sub-folders are searched, their names are the labels)."
        )
    cache_file = None
    cache_key = ""
    stats: list[tuple[str, int, int]] = []
    model_key: tuple[Any, ...] = ()
    if cfg.get("cache", True) and cfg.get("cache_dir"):
        # the folder as spelled too: the cache holds its files' paths as they were spelled (gallery=photos and
        # gallery=/abs/photos would read back paths that are not under each other's folder)
        key = fingerprint(folder.resolve(), str(folder), model.path.resolve())[:16]
        cache_file = Path(cfg.cache_dir) / f"gallery-{key}.npz"
        ckpt_stat = model.path.stat()
        stats = file_stats(files, folder)
        model_key = (CACHE_VERSION, ckpt_stat.st_size, ckpt_stat.st_mtime_ns, json.dumps(model.preprocessing))
        cache_key = fingerprint(*model_key, stats)
        cached = _read_cache(cache_file, cache_key)
        if cached is not None:
            paths, embeddings, skipped = cached
            log.info("gallery embeddings reused from %s", cache_file)
            gallery = _folder_gallery(folder, paths, embeddings, skipped, cache_file, model, files)
            if skipped:  # said on every run, not only the one that embedded them
                log.warning(
                    "gallery: skipped %d unreadable image file(s) of %s, e.g. %s (found when it was embedded; %s "
                    "holds the others' embeddings)",
                    skipped,
                    folder,
                    "; ".join(gallery.skipped_files[:3]),
                    cache_file,
                )
            return gallery
    embedded = _embed_gallery_files(files, model, int(cfg.get("batch_size") or 256), cache_file, model_key, stats)
    if embedded.failed:
        examples = "; ".join(f"{p} ({why})" for p, why in embedded.failed[:3])
        log.warning("gallery: skipped %d unreadable image file(s), e.g. %s", len(embedded.failed), examples)
    if not embedded.paths:
        raise UserError(f"none of the {len(files)} image files of gallery={str(folder)!r} could be read.")
    paths = [str(p) for p in embedded.paths]
    if cache_file is not None:
        _write_cache(cache_file, cache_key, paths, embedded.embeddings, len(embedded.failed))
        shutil.rmtree(_parts_dir(cache_file), ignore_errors=True)  # the whole cache replaces its parts
    return _folder_gallery(folder, paths, embedded.embeddings, len(embedded.failed), cache_file, model, files)


#: A folder gallery is embedded in parts of this many files; with a cache, each part is saved as soon as it is done,
#: so that a start that is interrupted (Ctrl-C, SIGTERM, a crash) resumes from the parts already saved.
CACHE_PART_FILES = 2048


def _parts_dir(cache_file: Path) -> Path:
    return cache_file.with_name(f"{cache_file.stem}.parts")


def _embed_gallery_files(
    files: list[Path],
    model: InferenceModel,
    batch_size: int,
    cache_file: Path | None,
    model_key: tuple[Any, ...],
    stats: list[tuple[str, int, int]],
) -> EmbeddedFiles:
    """Embed the gallery's files batch by batch with a progress bar (more than one batch) on stderr. With a cache,
    the files go in parts of :data:`CACHE_PART_FILES`, each saved beside the cache (``<cache>.parts/``) under the
    fingerprint of its own files and the checkpoint, and a part saved by an earlier, interrupted start is reused."""
    kept: list[Path] = []
    failed: list[tuple[Path, str]] = []
    arrays: list[np.ndarray] = []
    resumed = 0
    parts = _parts_dir(cache_file) if cache_file is not None else None
    progress = Progress(
        TextColumn("embedding the gallery"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=len(files) <= batch_size,
    )
    with progress:
        task = progress.add_task("embed", total=len(files))
        for start in range(0, len(files), CACHE_PART_FILES):
            chunk = files[start : start + CACHE_PART_FILES]
            part_file = parts / f"{start // CACHE_PART_FILES:06d}.npz" if parts is not None else None
            part_key = fingerprint(*model_key, stats[start : start + len(chunk)]) if part_file is not None else ""
            saved = _read_part(part_file, part_key) if part_file is not None else None
            if saved is None:
                done: list[EmbeddedFiles] = []
                for b in range(0, len(chunk), batch_size):
                    done.append(model.embed_files(chunk[b : b + batch_size], batch_size))
                    progress.advance(task, len(done[-1].paths) + len(done[-1].failed))
                saved = EmbeddedFiles(
                    [p for e in done for p in e.paths],
                    np.concatenate([e.embeddings for e in done]),
                    [f for e in done for f in e.failed],
                )
                if part_file is not None:
                    _write_part(part_file, part_key, saved)
            else:
                resumed += len(chunk)
                progress.advance(task, len(chunk))
            kept += saved.paths
            failed += saved.failed
            arrays.append(saved.embeddings)
    if resumed:
        log.info("gallery: %d of %d files' embeddings resumed from %s", resumed, len(files), parts)
    embeddings = np.concatenate(arrays) if arrays else np.zeros((0, model.embedding_dim), dtype=np.float32)
    return EmbeddedFiles(paths=kept, embeddings=embeddings.astype(np.float32, copy=False), failed=failed)


def _read_part(path: Path, fingerprint: str) -> EmbeddedFiles | None:
    arrays = load_fingerprinted(path, fingerprint, ("paths", "embeddings", "failed", "why"), "gallery cache part")
    if arrays is None:
        return None
    failed = zip(arrays["failed"].tolist(), arrays["why"].tolist(), strict=True)
    return EmbeddedFiles(
        [Path(p) for p in arrays["paths"].tolist()], arrays["embeddings"], [(Path(p), w) for p, w in failed]
    )


def _write_part(path: Path, fingerprint: str, part: EmbeddedFiles) -> None:
    save_fingerprinted(
        path,
        fingerprint,
        "part of the gallery embeddings",
        paths=np.array([str(p) for p in part.paths], dtype=str),
        embeddings=part.embeddings.astype(np.float32),
        failed=np.array([str(p) for p, _ in part.failed], dtype=str),
        why=np.array([why for _, why in part.failed], dtype=str),
    )


def _weights_finite(model: InferenceModel) -> bool:
    tensors = [*model.encoder.parameters(), *model.encoder.buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def diverged_hint(model: InferenceModel) -> str:
    """Why a checkpoint embeds images to NaN and what to do: nearly always weights that went NaN in training."""
    if _weights_finite(model):
        return (
            f"the weights of ckpt_path={model.path} are finite, so these images overflow the model; check them, or "
            f"search with another checkpoint."
        )
    return (
        f"ckpt_path={model.path} holds NaN or inf weights (its training diverged); search with a checkpoint saved "
        f"before that, or retrain with a lower optimizer.lr."
    )


def _folder_gallery(
    folder: Path,
    paths: list[str],
    embeddings: np.ndarray,
    skipped: int,
    cache_file: Path | None,
    model: InferenceModel,
    files: Sequence[Path] = (),
) -> Gallery:
    bad = non_finite_rows(embeddings)
    if len(bad):
        examples = ", ".join(paths[i] for i in bad[:3]) + (", …" if len(bad) > 3 else "")
        raise UserError(
            f"gallery={str(folder)!r}: the checkpoint embeds {len(bad)} of its {len(paths)} images to non-finite "
            f"values (NaN or inf), e.g. {examples}; {diverged_hint(model)}"
        )
    labels = [folder_label(Path(p), folder) for p in paths]
    return Gallery(
        embeddings=embeddings,
        labels=labels if any(label is not None for label in labels) else None,
        paths=paths,
        source=folder,
        index_path=cache_file.with_suffix(".faiss") if cache_file is not None else None,
        skipped=skipped,
        # the folder's image files that have no embedding: the unreadable ones (also when read from the cache)
        skipped_files=sorted(set(map(str, files)) - set(paths)) if skipped else [],
        root=folder,
        # embedded by this model just now (or cached under its fingerprint): a hashing model's codes are its signs
        codes=pack_codes(embeddings) if encoder_code_bits(model.encoder) is not None else None,
    )


def _read_cache(path: Path, fingerprint: str) -> tuple[list[str], np.ndarray, int] | None:
    arrays = load_fingerprinted(path, fingerprint, ("paths", "embeddings", "skipped"), "gallery cache")
    if arrays is None:
        return None
    return arrays["paths"].tolist(), arrays["embeddings"], int(arrays["skipped"])


def _write_cache(path: Path, fingerprint: str, paths: list[str], embeddings: np.ndarray, skipped: int) -> None:
    save_fingerprinted(
        path,
        fingerprint,
        "gallery embeddings",
        paths=np.array(paths, dtype=str),
        embeddings=embeddings.astype(np.float32),
        skipped=np.array(skipped),
    )


# -- searching it ---------------------------------------------------------------------------------------------
EXACT_METHOD = "exact (float64 cosines, ties to the lower gallery index)"


@dataclass(frozen=True)
class RetrievalResult:
    """The one result of a search of a gallery, whoever asks (``simlearn-search``, the service): each query's top k
    gallery items, ``indices`` (num_queries, k) gallery rows, most similar first (or in the post-processing steps'
    order), ``cosines`` (num_queries, k) float64, each the query's own cosine with the item; ``exact``: whether the
    top k are simlearn's exact ones (False through an approximate index); ``method``: how it searched, for people;
    ``gallery``: the items' metadata (names, paths, labels)."""

    indices: np.ndarray
    cosines: np.ndarray
    exact: bool
    method: str
    gallery: Gallery

    def rows(self, query: int, query_class: str | None = None) -> list[dict[str, Any]]:
        """The results of query ``query`` in the one schema (:func:`~simlearn.retrieval.result.result_row`)."""
        g = self.gallery
        out = []
        for rank, (i, c) in enumerate(zip(self.indices[query].tolist(), self.cosines[query].tolist(), strict=True), 1):
            label = g.labels[i] if g.labels is not None else None
            path = g.paths[i] if g.paths is not None else None
            out.append(result_row(rank, i, g.name(i), path, label, c, query_class))
        return out


def search_gallery(
    queries: Any,
    gallery: Gallery,
    k: int,
    *,
    index: CandidateSource | None = None,
    postprocess: Sequence[PostProcessor] = (),
    exclude: np.ndarray | None = None,
    searched: PreparedGallery | None = None,
) -> RetrievalResult:
    """The one search of a gallery: each query's top k by :func:`simlearn.retrieval.exact.top_k` (exact:
    float64 cosines, ties to the lower gallery index), through ``index`` when given (:func:`search_index`: a LanceDB
    table, a saved faiss index), or re-ranked by ``postprocess`` steps (an exact in-memory search, then the steps).
    ``exclude``: per query a gallery row left out (an item's own row when searching its neighbours), or -1.
    ``searched``: the gallery prepared on another device (a service's GPU); ``queries`` may be a tensor there."""
    n = len(gallery.embeddings)
    host = queries.detach().cpu().numpy() if isinstance(queries, torch.Tensor) else np.asarray(queries)
    bad = non_finite_rows(host)
    if len(bad):
        raise UserError(
            f"{len(bad)} of the {len(host)} query embeddings are not finite (rows {first_rows(bad)}); a NaN or "
            f"inf has no similarity to rank. Embed the queries with a checkpoint whose weights are finite."
        )
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise UserError(f"k must be an integer ≥ 1, got {k!r}; e.g. k=5.")
    extra = int(exclude is not None)
    if k + extra > n:
        raise UserError(
            f"k={k} but the gallery {gallery.source} has only {n - extra} items; use k={n - extra} or less."
        )
    if gallery.codes is not None and (postprocess or not isinstance(index, CodeIndex)):
        raise UserError(
            "a gallery of binary codes is searched by Hamming distance (a code index: search_index), without "
            "post-processing steps; leave out postprocess= (rerank=N re-ranks the Hamming candidates by floats)."
        )
    if isinstance(index, CodeIndex) and index.depth is None:  # the Hamming ranking: the exact search of the signs
        queries, searched = unpack_signs(pack_codes(host)), gallery.searchable_signs()
    if postprocess:  # the steps re-rank an exact in-memory search (simlearn.retrieval.postprocess)
        cos, idx = postprocessed_top_k(host, gallery.embeddings, k, postprocess, exclude)
        return RetrievalResult(idx, cos, True, postprocessed_method(postprocess), gallery)
    cos, idx = top_k(queries, searched if searched is not None else gallery.searchable(), k + extra, index=index)
    if exclude is not None:  # each query's own row left out, the others in order
        idx, cos = drop_rows(exclude, idx, cos)
    exact = index is None or bool(index.exact)
    return RetrievalResult(idx, cos, exact, index.describe() if index is not None else EXACT_METHOD, gallery)


def run_search(
    queries: np.ndarray,
    gallery: Gallery,
    k: int,
    faiss_threshold: int | None = 50000,
    factory: str = "Flat",
    postprocess: Sequence[PostProcessor] = (),
    code_search: str = "exact",
    rerank: int | None = None,
) -> RetrievalResult:
    """``simlearn-search``'s search: :func:`search_gallery` through what :func:`search_index` chooses (a LanceDB
    gallery through LanceDB, a code gallery through its code index, galleries of ``faiss_threshold`` items or more
    through their saved faiss index, exact for ``factory="Flat"``), or with the ``postprocess`` steps. Its ``method``
    says when an approximate index (e.g. HNSW32, IVF_PQ) was used."""
    index = None if postprocess else search_index(gallery, faiss_threshold, factory, code_search, rerank)
    return search_gallery(queries, gallery, k, index=index, postprocess=postprocess)


def search_index(
    gallery: Gallery,
    faiss_threshold: int | None = 50000,
    factory: str = "Flat",
    code_search: str = "exact",
    rerank: int | None = None,
) -> CandidateSource | None:
    """What a gallery is searched through, for every search path (``simlearn-search``, the service): a code
    gallery's :func:`~simlearn.retrieval.codes.code_index` (``code_search``: ``exact``, ``Flat`` or ``HNSW32``;
    a LanceDB code gallery's own LanceDB Hamming search instead, where ``code_search`` other than ``exact`` is one
    line; ``rerank``: that many Hamming candidates re-ranked by the float embeddings), else its own candidate source (a
    LanceDB table, ``gallery.candidates``), else from ``faiss_threshold`` items on a faiss inner-product index saved
    next to its embeddings (:func:`gallery_index`; exact for ``factory="Flat"``), else nothing (None: the exact
    in-memory search). ``rerank`` with a gallery of float embeddings is one line."""
    if gallery.codes is not None:
        codes = gallery.candidates if isinstance(gallery.candidates, CodeIndex) else None
        if codes is not None and str(code_search or "exact") != "exact":
            raise UserError(
                f"code_index={code_search!r} searches codes in memory, but this LanceDB gallery's codes are searched "
                f"through LanceDB (db_search=auto|exact|index); set db_search=memory to use code_index="
                f"{code_search}, or leave out code_index=."
            )
        codes = codes or code_index(gallery.codes, str(code_search or "exact"))
        return codes if rerank is None else codes.reranking(rerank)
    if rerank is not None:
        raise UserError(
            f"rerank={rerank!r} re-ranks the Hamming candidates of a gallery of binary codes (a head=hash model's), "
            "but this gallery holds float embeddings, searched exactly already; leave out rerank=."
        )
    n = len(gallery.embeddings)
    if gallery.candidates is not None or faiss_threshold is None or n < int(faiss_threshold):
        return gallery.candidates
    if not faiss_installed():  # not imported here: gallery_index imports it, without faiss's loader lines
        log.warning(
            "the gallery has %d items (faiss_threshold=%d) but faiss is not installed (pip install "
            "'simlearn[faiss]'); searching exactly without it",
            n,
            int(faiss_threshold),
        )
        return None
    return gallery_index(gallery.embeddings, gallery.index_path, factory or "Flat")


def postprocessed_method(steps: Sequence[PostProcessor]) -> str:
    """How a post-processed search went, for people (``search.json``'s printout, the service's ``search``)."""
    names = "+".join(str(getattr(step, "name", type(step).__name__)) for step in steps)
    return (
        f"exact (float64 cosines, ties to the lower gallery index), then post-processed: {names} (the order is the "
        f"steps'; each result's cosine is the query's own with it)"
    )
