"""Reverse image search: ``simlearn-search ckpt_path=PATH query=IMAGE_OR_FOLDER gallery=FOLDER_OR_NPZ k=5``.

The query images are embedded with the checkpoint's encoder and preprocessing; the gallery is a folder of images
(embedded too, and cached), an npz of embeddings written by ``simlearn-embed``, or a LanceDB table it wrote
(``simlearn-embed db=PATH``, searched through LanceDB: :mod:`simlearn.vectordb`). Each query's k most similar gallery
items are printed with their cosine similarity and angle, written to ``search.json`` and drawn in a grid.
The search is the one of :mod:`simlearn.evaluation.neighbours`: exact, with cosines in float64 and ties to the lower
gallery index. Galleries of at least ``faiss_threshold`` items are searched through a faiss inner-product index saved
next to their embeddings (exact for ``faiss_index=Flat``; the output says when an approximate one was used).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from simlearn import vectordb
from simlearn.data.images import (
    DECODE_ERRORS,
    ImageLoader,
    find_images,
    folder_label,
    is_image_name,
    thumbnail,
)
from simlearn.errors import UserError
from simlearn.evaluation.neighbours import (
    GalleryIndex,
    PreparedGallery,
    faiss_installed,
    gallery_index,
    prepare_gallery,
    top_k,
)
from simlearn.fields import NOT_LABEL_FIELDS
from simlearn.inference import EmbeddedFiles, InferenceModel, load_model, pick_device
from simlearn.reports.plots import GridTile, save_retrieval_grid, similarity_captions
from simlearn.retrieval.result import result_row

log = logging.getLogger(__name__)

__all__ = ["Gallery", "Queries", "file_stats", "load_gallery", "load_queries", "run_search", "search"]

#: Bumped when the cache file layout changes, so that old caches are rebuilt rather than misread.
CACHE_VERSION = 1


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
    root: Path | None = None
    #: how to name items without files (e.g. ``test[17]``: split and dataset index of an npz from simlearn-embed)
    ids: list[str] | None = None
    #: every label field of the items (name → (N,) or (N, m) values), when the gallery came from simlearn-embed
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    #: a search of this gallery outside simlearn (a LanceDB table): :func:`run_search` searches through it
    candidates: GalleryIndex | None = None
    _prepared: PreparedGallery | None = field(default=None, init=False, repr=False)

    def searchable(self) -> PreparedGallery:
        """The embeddings checked and scaled to unit rows once (:func:`prepare_gallery`), so that searching one query
        at a time (a service) costs no pass over the whole gallery per search."""
        if self._prepared is None:
            self._prepared = prepare_gallery(self.embeddings)
        return self._prepared

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


@dataclass
class Queries:
    paths: list[Path]
    embeddings: np.ndarray
    labels: list[str | None]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def file_stats(files: Sequence[Path], root: Path | None = None) -> list[tuple[str, int, int]]:
    """What a cache of embedded files is keyed by (with the model): each file's name (relative to ``root``), size and
    modification time, so that a file changed, added, removed or renamed makes the cache stale; a file that is gone
    counts as size and time -1."""
    stats = []
    for path in files:
        try:
            stat = Path(path).stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        stats.append((str(Path(path).relative_to(root)) if root is not None else str(path), size, mtime))
    return stats


def _fingerprint(*parts: Any) -> str:
    digest = hashlib.sha1()
    for part in parts:
        digest.update(memoryview(np.ascontiguousarray(part)) if isinstance(part, np.ndarray) else str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


# -- the gallery ---------------------------------------------------------------------------------------------------
def load_gallery(spec: str | Path, model: InferenceModel, cfg: DictConfig) -> Gallery:
    """The gallery named by ``spec``: an npz written by simlearn-embed, a LanceDB database (or table) it wrote
    (``cfg.db_table``, ``cfg.db_search``, ``cfg.db_nprobes``, ``cfg.db_refine_factor``: :func:`gallery_from_database`),
    or a folder of images (embedded now, or read from the cache when its files and the checkpoint are unchanged)."""
    path = Path(str(spec)).expanduser()
    if vectordb.is_database(path):
        return gallery_from_database(path, model, cfg)
    if path.is_dir():
        return gallery_from_folder(path, model, cfg)
    if path.is_file() and path.suffix.lower() == ".npz":
        return gallery_from_npz(path, model)
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


def _first_rows(rows: np.ndarray, shown: int = 5) -> str:
    return ", ".join(str(int(i)) for i in rows[:shown]) + (", …" if len(rows) > shown else "")


def non_finite_rows(embeddings: np.ndarray, block: int = 65536) -> np.ndarray:
    """Indices of the rows holding a NaN or an infinity: their cosine with anything is NaN, which ranks arbitrarily
    and would print as "cos nan, 180°". Checked in blocks of rows: the mask of a million 512-d rows takes 0.5 GB."""
    bad = [
        start + np.flatnonzero(~np.isfinite(embeddings[start : start + block]).all(axis=1))
        for start in range(0, len(embeddings), block)
    ]
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def gallery_from_npz(path: Path, model: InferenceModel) -> Gallery:
    """The gallery of an npz written by simlearn-embed, refused with one message when its arrays do not fit
    together (another model's dimension, per-item arrays of other lengths, non-finite rows)."""
    try:
        arrays = np.load(path, allow_pickle=False)
        files = set(arrays.files)
        embeddings = arrays["embeddings"] if "embeddings" in files else None
        per_item = {name: arrays[name] for name in PER_ITEM_ARRAYS if name in files}
    except Exception as error:  # zipfile / pickle / value errors of a broken file
        raise UserError(f"gallery={str(path)!r} is not a readable npz file ({error}).") from error
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
            else _diverged_hint(model)
        )
        raise UserError(
            f"gallery={str(path)!r}: {len(bad)} of its {len(embeddings)} embedding rows are not finite (NaN or inf), "
            f"rows {_first_rows(bad)}; they have no similarity to rank. {fix}"
        )
    source_ckpt = str(arrays["ckpt_path"]) if "ckpt_path" in files else None
    if source_ckpt and Path(source_ckpt) != model.path.resolve():
        log.warning("the gallery %s was embedded with %s, not with %s", path, source_ckpt, model.path)
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
        index_path=path.with_suffix(".faiss"),
        ids=ids,
        fields=label_fields,
    )


#: the arrays of an npz from simlearn-embed that are not label fields


def gallery_from_database(path: Path, model: InferenceModel, cfg: DictConfig) -> Gallery:
    """The gallery of a LanceDB table written by ``simlearn-embed db=PATH`` (``path``: the database folder, its table
    ``cfg.db_table`` or its only one, or a ``<table>.lance`` folder), searched through LanceDB as ``cfg.db_search``
    says (:func:`simlearn.vectordb.candidates`: ``auto``, ``exact``, ``index`` or ``memory``)."""
    contents = vectordb.read_table(path, cfg.get("db_table"))
    where = f"gallery={str(path)!r} (LanceDB table {contents.name!r})"
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
            f"{_first_rows(bad)}; {remake}."
        )
    if contents.ckpt_path and Path(contents.ckpt_path) != model.path.resolve():
        log.warning("the gallery %s was embedded with %s, not with %s", path, contents.ckpt_path, model.path)
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
    )


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
    fingerprint = ""
    stats: list[tuple[str, int, int]] = []
    model_key: tuple[Any, ...] = ()
    if cfg.get("cache", True) and cfg.get("cache_dir"):
        key = _fingerprint(folder.resolve(), model.path.resolve())[:16]
        cache_file = Path(cfg.cache_dir) / f"gallery-{key}.npz"
        ckpt_stat = model.path.stat()
        stats = file_stats(files, folder)
        model_key = (CACHE_VERSION, ckpt_stat.st_size, ckpt_stat.st_mtime_ns, json.dumps(model.preprocessing))
        fingerprint = _fingerprint(*model_key, stats)
        cached = _read_cache(cache_file, fingerprint)
        if cached is not None:
            paths, embeddings, skipped = cached
            log.info("gallery embeddings reused from %s", cache_file)
            return _folder_gallery(folder, paths, embeddings, skipped, cache_file, model)
    embedded = _embed_gallery_files(files, model, int(cfg.get("batch_size") or 256), cache_file, model_key, stats)
    if embedded.failed:
        examples = "; ".join(f"{p} ({why})" for p, why in embedded.failed[:3])
        log.warning("gallery: skipped %d unreadable image file(s), e.g. %s", len(embedded.failed), examples)
    if not embedded.paths:
        raise UserError(f"none of the {len(files)} image files of gallery={str(folder)!r} could be read.")
    paths = [str(p) for p in embedded.paths]
    if cache_file is not None:
        _write_cache(cache_file, fingerprint, paths, embedded.embeddings, len(embedded.failed))
        shutil.rmtree(_parts_dir(cache_file), ignore_errors=True)  # the whole cache replaces its parts
    return _folder_gallery(folder, paths, embedded.embeddings, len(embedded.failed), cache_file, model)


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
            part_key = _fingerprint(*model_key, stats[start : start + len(chunk)]) if part_file is not None else ""
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


def _load_fingerprinted(path: Path, fingerprint: str, keys: tuple[str, ...], what: str) -> dict[str, Any] | None:
    """The arrays ``keys`` of an npz cache file written for ``fingerprint``; None when it is absent, was written for
    other files or another model, or cannot be read (a file cut short by an interruption: logged, then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if str(arrays["fingerprint"]) != fingerprint:
                return None
            return {key: arrays[key] for key in keys}
    except Exception as error:
        log.warning("embedding again: the %s %s cannot be read (%s)", what, path, error)
        return None


def _read_part(path: Path, fingerprint: str) -> EmbeddedFiles | None:
    arrays = _load_fingerprinted(path, fingerprint, ("paths", "embeddings", "failed", "why"), "gallery cache part")
    if arrays is None:
        return None
    failed = zip(arrays["failed"].tolist(), arrays["why"].tolist(), strict=True)
    return EmbeddedFiles(
        [Path(p) for p in arrays["paths"].tolist()], arrays["embeddings"], [(Path(p), w) for p, w in failed]
    )


def _save_fingerprinted(path: Path, fingerprint: str, what: str, **arrays: np.ndarray) -> None:
    """Write an npz cache file for ``fingerprint`` atomically (a partial file, then a rename: an interruption never
    leaves a half-written cache); a folder that cannot be written only costs embedding again next time (logged)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}.partial.npz")
        np.savez(partial, fingerprint=np.array(fingerprint), **arrays)
        os.replace(partial, path)
    except OSError as error:
        log.warning("could not save the %s in %s (%s)", what, path, error)


def _write_part(path: Path, fingerprint: str, part: EmbeddedFiles) -> None:
    _save_fingerprinted(
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


def _diverged_hint(model: InferenceModel) -> str:
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
) -> Gallery:
    bad = non_finite_rows(embeddings)
    if len(bad):
        examples = ", ".join(paths[i] for i in bad[:3]) + (", …" if len(bad) > 3 else "")
        raise UserError(
            f"gallery={str(folder)!r}: the checkpoint embeds {len(bad)} of its {len(paths)} images to non-finite "
            f"values (NaN or inf), e.g. {examples}; {_diverged_hint(model)}"
        )
    labels = [folder_label(Path(p), folder) for p in paths]
    return Gallery(
        embeddings=embeddings,
        labels=labels if any(label is not None for label in labels) else None,
        paths=paths,
        source=folder,
        index_path=cache_file.with_suffix(".faiss") if cache_file is not None else None,
        skipped=skipped,
        root=folder,
    )


def _read_cache(path: Path, fingerprint: str) -> tuple[list[str], np.ndarray, int] | None:
    arrays = _load_fingerprinted(path, fingerprint, ("paths", "embeddings", "skipped"), "gallery cache")
    if arrays is None:
        return None
    return arrays["paths"].tolist(), arrays["embeddings"], int(arrays["skipped"])


def _write_cache(path: Path, fingerprint: str, paths: list[str], embeddings: np.ndarray, skipped: int) -> None:
    _save_fingerprinted(
        path,
        fingerprint,
        "gallery embeddings",
        paths=np.array(paths, dtype=str),
        embeddings=embeddings.astype(np.float32),
        skipped=np.array(skipped),
    )


# -- the queries ---------------------------------------------------------------------------------------------------
def find_queries(spec: str | Path, loader: ImageLoader) -> tuple[list[Path], Path | None]:
    """The query image files and the query folder (None for a single file); a single file must decode."""
    path = Path(str(spec)).expanduser()
    if path.is_file():
        try:
            loader(path)
        except DECODE_ERRORS as error:
            raise UserError(
                f"query={str(spec)!r} is not an image that can be read ({type(error).__name__}: {error}); give an "
                f"image file (png, jpg, …) or a folder of them."
            ) from error
        return [path], None
    if path.is_dir():
        files = find_images(path)
        if not files:
            raise UserError(f"query={str(spec)!r} is a folder without image files; give an image or a folder of them.")
        return files, path
    raise UserError(f"query={str(spec)!r} does not exist; give an image file or a folder of images.")


def load_queries(spec: str | Path, model: InferenceModel, gallery_classes: set[str], batch_size: int = 256) -> Queries:
    """Embed the query image (a file) or images (a folder, recursively; unreadable files are skipped). A query's
    label is its top-level sub-folder under the query folder, or else the folder it is in, when the gallery has a
    class of that name."""
    files, root = find_queries(spec, model.loader)
    embedded = model.embed_files(files, batch_size)
    if embedded.failed:
        log.warning("query: skipped %d unreadable image file(s), e.g. %s", len(embedded.failed), embedded.failed[0][0])
    if not embedded.paths:
        raise UserError(f"none of the {len(files)} image files of query={str(spec)!r} could be read.")
    bad = non_finite_rows(embedded.embeddings)
    if len(bad):
        examples = ", ".join(str(embedded.paths[i]) for i in bad[:3]) + (", …" if len(bad) > 3 else "")
        raise UserError(
            f"{len(bad)} of the {len(embedded.paths)} query embeddings are not finite (NaN or inf): {examples}; "
            f"{_diverged_hint(model)}"
        )
    labels = []
    for file in embedded.paths:
        name = (folder_label(file, root) if root is not None else None) or file.parent.name
        labels.append(name if name in gallery_classes else None)
    return Queries(paths=embedded.paths, embeddings=embedded.embeddings, labels=labels, skipped=embedded.failed)


# -- searching -----------------------------------------------------------------------------------------------------
def run_search(
    queries: np.ndarray, gallery: Gallery, k: int, faiss_threshold: int | None = 50000, factory: str = "Flat"
) -> tuple[np.ndarray, np.ndarray, str]:
    """Each query's top k gallery items: ``(cos, index, method)``, most similar first, by the one search of
    :func:`simlearn.evaluation.neighbours.top_k`: exact (float64 cosines, ties to the lower gallery index). Galleries
    of ``faiss_threshold`` items or more are searched through their saved faiss index (:func:`gallery_index`, built
    once next to the gallery embeddings), which is exact for ``factory="Flat"``; a LanceDB gallery through LanceDB
    (``gallery.candidates``). ``method`` says when an approximate index (e.g. HNSW32, IVF_PQ) was used."""
    n = len(gallery.embeddings)
    bad = non_finite_rows(np.asarray(queries))
    if len(bad):
        raise UserError(
            f"{len(bad)} of the {len(queries)} query embeddings are not finite (rows {_first_rows(bad)}); a NaN or "
            f"inf has no similarity to rank. Embed the queries with a checkpoint whose weights are finite."
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"k must be an integer ≥ 1, got {k!r}; e.g. k=5.")
    if k > n:
        raise UserError(f"k={k} but the gallery {gallery.source} has only {n} items; use k={n} or less.")
    index = gallery.candidates
    if index is None and faiss_threshold is not None and n >= faiss_threshold:
        if not faiss_installed():  # not imported here: gallery_index imports it, without faiss's loader lines
            log.warning(
                "the gallery has %d items (faiss_threshold=%d) but faiss is not installed (pip install "
                "'simlearn[faiss]'); searching exactly without it",
                n,
                faiss_threshold,
            )
        else:
            index = gallery_index(gallery.embeddings, gallery.index_path, factory or "Flat")
    cos, idx = top_k(queries, gallery.searchable(), k, index=index)
    method = index.describe() if index is not None else "exact (float64 cosines, ties to the lower gallery index)"
    return cos, idx, method


def search(cfg: DictConfig) -> list[dict[str, Any]]:
    """The whole command: load, embed, search, print, write ``results`` and ``grid``; return the results."""
    device = pick_device(cfg.get("device"))
    model = load_model(cfg.ckpt_path, device)
    find_queries(cfg.query, model.loader)  # a bad query fails before the gallery is embedded
    gallery = load_gallery(cfg.gallery, model, cfg)
    queries = load_queries(cfg.query, model, gallery.classes, int(cfg.get("batch_size") or 256))
    k = cfg.get("k", 5)
    factory = cfg.get("faiss_index") or "Flat"
    cos, idx, method = run_search(queries.embeddings, gallery, k, cfg.get("faiss_threshold"), factory)
    results = []
    for q, path in enumerate(queries.paths):
        items = []
        for rank, (i, c) in enumerate(zip(idx[q].tolist(), cos[q].tolist(), strict=True), start=1):
            label = gallery.labels[i] if gallery.labels is not None else None
            path_i = gallery.paths[i] if gallery.paths is not None else None
            items.append(result_row(rank, i, gallery.name(i), path_i, label, c, queries.labels[q]))
        results.append({"query": str(path), "label": queries.labels[q], "results": items})
    _print(results, gallery, queries, method)
    if cfg.get("results"):
        out = Path(cfg.results)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    if cfg.get("grid"):
        grid = _grid(Path(cfg.grid), results, model, int(cfg.get("grid_max_queries") or 16))
        Console().print(f"grid: {grid}", highlight=False)
    return results


def _print(results: list[dict[str, Any]], gallery: Gallery, queries: Queries, method: str) -> None:
    console = Console()
    for result in results:
        label = f" ({result['label']})" if result["label"] else ""
        table = Table(title=f"query {result['query']}{label}", title_justify="left")
        for column in ("rank", "gallery item", "label", "cosine", "angle"):
            table.add_column(column, justify="right" if column in ("rank", "cosine", "angle") else "left")
        if any(item["same_label"] is not None for item in result["results"]):
            table.add_column("same label", justify="center")
        for item in result["results"]:
            cells = [
                str(item["rank"]),
                item["name"],
                item["label"] or "",
                f"{item['cosine']:.4f}",
                f"{item['angle_deg']:.1f}°",
            ]
            if len(table.columns) == 6:
                cells.append({True: "[green]✓[/]", False: "[red]✗[/]", None: ""}[item["same_label"]])
            table.add_row(*cells)
        console.print(table)
    skipped = f", {gallery.skipped} unreadable file(s) skipped" if gallery.skipped else ""
    summary = (
        f"{len(results)} quer{'y' if len(results) == 1 else 'ies'} against {len(gallery.embeddings)} gallery items "
        f"of {gallery.source}{skipped}; search: {method}"
    )
    if queries.skipped:
        summary += f"; {len(queries.skipped)} unreadable query file(s) skipped"
    labelled = [r for r in results if r["results"][0]["same_label"] is not None]
    if labelled:
        hits = sum(r["results"][0]["same_label"] for r in labelled)
        summary += f"; top-1 hits {hits}/{len(labelled)} labelled queries"
    console.print(summary, highlight=False)


def _grid(path: Path, results: list[dict[str, Any]], model: InferenceModel, max_queries: int) -> Path:
    channels = int(model.preprocessing.get("channels", 3))
    rows = []
    for result in results[:max_queries]:
        label = f"\n{result['label']}" if result["label"] else ""
        row = [GridTile(thumbnail(result["query"], channels), f"query{label}")]
        similarities = similarity_captions([item["cosine"] for item in result["results"]])  # decimals to tell apart
        for item, similarity in zip(result["results"], similarities, strict=True):
            image = thumbnail(item["path"], channels) if item["path"] and is_image_name(Path(item["path"])) else None
            caption = f"#{item['rank']} {item['label'] or item['name']}\n{similarity}"
            row.append(GridTile(image, caption, item["same_label"]))
        rows.append(row)
    shown = f" (first {max_queries} of {len(results)} queries)" if len(results) > max_queries else ""
    return save_retrieval_grid(path, rows, title=f"Queries and their top {len(results[0]['results'])}{shown}")
