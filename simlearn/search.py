"""Reverse image search: ``simlearn-search ckpt_path=PATH query=IMAGE_OR_FOLDER gallery=FOLDER_OR_NPZ k=5``.

The query images are embedded with the checkpoint's encoder and preprocessing; the gallery is a folder of images
(embedded too, and cached) or an npz of embeddings written by ``simlearn-embed``. Each query's k most similar gallery
items are printed with their cosine similarity and angle, written to ``search.json`` and drawn in a grid.
Galleries of at least ``faiss_threshold`` items are searched through a faiss inner-product index saved next to
their embeddings; smaller ones exactly, in chunks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from simlearn.checkpoints import LoadedEncoder, load_encoder
from simlearn.cli import exit_on_user_error
from simlearn.config import config_dir
from simlearn.embed import pick_device
from simlearn.errors import UserError
from simlearn.evaluation.neighbours import top_k, unit_rows
from simlearn.evaluation.plots import GridTile, angle_deg, save_retrieval_grid
from simlearn.images import DECODE_ERRORS, ImageLoader, embed_files, find_images, folder_label, is_image_name, thumbnail

log = logging.getLogger(__name__)

__all__ = ["Gallery", "Queries", "load_gallery", "load_queries", "run_search", "search"]

#: Bumped when the cache file layout changes, so that old caches are rebuilt rather than misread.
CACHE_VERSION = 1


@dataclass
class Gallery:
    """Unit embeddings (N, d) of the gallery's items, with their labels and files when known."""

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


def _fingerprint(*parts: Any) -> str:
    digest = hashlib.sha1()
    for part in parts:
        digest.update(memoryview(np.ascontiguousarray(part)) if isinstance(part, np.ndarray) else str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


# -- the gallery ---------------------------------------------------------------------------------------------------
def load_gallery(spec: str | Path, loaded: LoadedEncoder, cfg: DictConfig, device: Any = "cpu") -> Gallery:
    """The gallery named by ``spec``: an npz written by simlearn-embed, or a folder of images (embedded now, or
    read from the cache when its files and the checkpoint are unchanged)."""
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        return gallery_from_folder(path, loaded, cfg, device)
    if path.is_file() and path.suffix.lower() == ".npz":
        return gallery_from_npz(path, loaded)
    if path.is_file():
        raise UserError(
            f"gallery={str(spec)!r} is a file but not an .npz; give a folder of images or an npz written by "
            f"simlearn-embed (e.g. gallery=outputs/embed/runs/<run>/test.npz)."
        )
    raise UserError(f"gallery={str(spec)!r} does not exist; give a folder of images or an npz from simlearn-embed.")


def gallery_from_npz(path: Path, loaded: LoadedEncoder) -> Gallery:
    try:
        arrays = np.load(path, allow_pickle=False)
        files = set(arrays.files)
        embeddings = arrays["embeddings"] if "embeddings" in files else None
    except Exception as error:  # zipfile / pickle / value errors of a broken file
        raise UserError(f"gallery={str(path)!r} is not a readable npz file ({error}).") from error
    if embeddings is None or embeddings.ndim != 2:
        raise UserError(
            f"gallery={str(path)!r} holds no 2-D 'embeddings' array (it has {sorted(files)}); use an npz written "
            f"by simlearn-embed."
        )
    if embeddings.shape[1] != loaded.embedding_dim:
        raise UserError(
            f"gallery={str(path)!r} holds {embeddings.shape[1]}-d embeddings but the checkpoint {loaded.path} makes "
            f"{loaded.embedding_dim}-d ones: they come from different models. Embed the gallery with this checkpoint "
            f"(simlearn-embed ckpt_path={loaded.path}) or search with the checkpoint that made it."
        )
    source_ckpt = str(arrays["ckpt_path"]) if "ckpt_path" in files else None
    if source_ckpt and Path(source_ckpt) != loaded.path.resolve():
        log.warning("the gallery %s was embedded with %s, not with %s", path, source_ckpt, loaded.path)
    labels = None
    if "labels" in files:
        names = arrays["class_names"].tolist() if "class_names" in files else []
        labels = [names[i] if 0 <= i < len(names) else str(i) for i in arrays["labels"].tolist()]
    paths = arrays["paths"].tolist() if "paths" in files else None
    ids = None
    if "index" in files:
        split = str(arrays["split"]) if "split" in files else ""
        ids = [f"{split}[{i}]" for i in arrays["index"].tolist()]
    return Gallery(
        embeddings=unit_rows(embeddings),
        labels=labels,
        paths=paths,
        source=path,
        index_path=path.with_suffix(".faiss"),
        ids=ids,
    )


def gallery_from_folder(folder: Path, loaded: LoadedEncoder, cfg: DictConfig, device: Any = "cpu") -> Gallery:
    files = find_images(folder)
    if not files:
        raise UserError(
            f"gallery={str(folder)!r} holds no image files ({', '.join(sorted({'.jpg', '.png', '.bmp'}))}, …); "
            f"point it at a folder of images (sub-folders are searched, their names are the labels)."
        )
    cache_file = None
    fingerprint = ""
    if cfg.get("cache", True) and cfg.get("cache_dir"):
        key = _fingerprint(folder.resolve(), loaded.path.resolve())[:16]
        cache_file = Path(cfg.cache_dir) / f"gallery-{key}.npz"
        ckpt_stat = loaded.path.stat()
        stats = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        fingerprint = _fingerprint(
            CACHE_VERSION, ckpt_stat.st_size, ckpt_stat.st_mtime_ns, json.dumps(loaded.preprocessing), stats
        )
        cached = _read_cache(cache_file, fingerprint)
        if cached is not None:
            paths, embeddings, skipped = cached
            log.info("gallery embeddings reused from %s", cache_file)
            return _folder_gallery(folder, paths, embeddings, skipped, cache_file)
    embedded = embed_files(
        loaded.encoder, files, ImageLoader(loaded.preprocessing), int(cfg.get("batch_size") or 256), device
    )
    if embedded.failed:
        examples = "; ".join(f"{p} ({why})" for p, why in embedded.failed[:3])
        log.warning("gallery: skipped %d unreadable image file(s), e.g. %s", len(embedded.failed), examples)
    if not embedded.paths:
        raise UserError(f"none of the {len(files)} image files of gallery={str(folder)!r} could be read.")
    paths = [str(p) for p in embedded.paths]
    if cache_file is not None:
        _write_cache(cache_file, fingerprint, paths, embedded.embeddings, len(embedded.failed))
    return _folder_gallery(folder, paths, embedded.embeddings, len(embedded.failed), cache_file)


def _folder_gallery(
    folder: Path, paths: list[str], embeddings: np.ndarray, skipped: int, cache_file: Path | None
) -> Gallery:
    labels = [folder_label(Path(p), folder) for p in paths]
    return Gallery(
        embeddings=unit_rows(embeddings),
        labels=labels if any(label is not None for label in labels) else None,
        paths=paths,
        source=folder,
        index_path=cache_file.with_suffix(".faiss") if cache_file is not None else None,
        skipped=skipped,
        root=folder,
    )


def _read_cache(path: Path, fingerprint: str) -> tuple[list[str], np.ndarray, int] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if str(arrays["fingerprint"]) != fingerprint:
                return None
            return arrays["paths"].tolist(), arrays["embeddings"], int(arrays["skipped"])
    except Exception as error:  # a broken cache file is rebuilt
        log.warning("ignoring the unreadable gallery cache %s (%s)", path, error)
        return None


def _write_cache(path: Path, fingerprint: str, paths: list[str], embeddings: np.ndarray, skipped: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}.partial.npz")
        np.savez(
            partial,
            fingerprint=np.array(fingerprint),
            paths=np.array(paths, dtype=str),
            embeddings=embeddings.astype(np.float32),
            skipped=np.array(skipped),
        )
        os.replace(partial, path)
    except OSError as error:
        log.warning("could not cache the gallery embeddings in %s (%s)", path, error)


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


def load_queries(
    spec: str | Path, loaded: LoadedEncoder, gallery_classes: set[str], batch_size: int = 256, device: Any = "cpu"
) -> Queries:
    """Embed the query image (a file) or images (a folder, recursively; unreadable files are skipped). A query's
    label is its top-level sub-folder under the query folder, or else the folder it is in, when the gallery has a
    class of that name."""
    loader = ImageLoader(loaded.preprocessing)
    files, root = find_queries(spec, loader)
    embedded = embed_files(loaded.encoder, files, loader, batch_size, device)
    if embedded.failed:
        log.warning("query: skipped %d unreadable image file(s), e.g. %s", len(embedded.failed), embedded.failed[0][0])
    if not embedded.paths:
        raise UserError(f"none of the {len(files)} image files of query={str(spec)!r} could be read.")
    labels = []
    for file in embedded.paths:
        name = (folder_label(file, root) if root is not None else None) or file.parent.name
        labels.append(name if name in gallery_classes else None)
    return Queries(
        paths=embedded.paths, embeddings=unit_rows(embedded.embeddings), labels=labels, skipped=embedded.failed
    )


# -- searching -----------------------------------------------------------------------------------------------------
def faiss_index(gallery: Gallery, factory: str = "Flat") -> tuple[Any, str]:
    """A faiss inner-product index of the gallery's embeddings: read from ``gallery.index_path`` when it was built
    from these very embeddings with this factory string, else built (and saved there). Returns (index, how)."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    embeddings = np.ascontiguousarray(gallery.embeddings, dtype=np.float32)
    expected = {"fingerprint": _fingerprint(embeddings), "factory": factory, "count": len(embeddings)}
    path = gallery.index_path
    meta = path.with_name(path.name + ".json") if path is not None else None
    if path is not None and path.is_file() and meta.is_file():
        try:
            if json.loads(meta.read_text()) == expected:
                index = faiss.read_index(str(path))
                if index.ntotal == len(embeddings) and index.d == embeddings.shape[1]:
                    return index, f"reused {path}"
        except (OSError, RuntimeError, ValueError) as error:
            log.warning("rebuilding the faiss index %s (%s)", path, error)
    try:
        index = faiss.index_factory(embeddings.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise UserError(
            f"faiss_index={factory!r} is not a faiss index_factory string ({error}); e.g. Flat (exact) or HNSW32."
        ) from error
    if not index.is_trained:
        index.train(embeddings)
    index.add(embeddings)
    if path is None:
        return index, "built in memory"
    try:
        partial = path.with_name(f".{path.name}.partial")
        faiss.write_index(index, str(partial))
        os.replace(partial, path)
        meta.write_text(json.dumps(expected) + "\n")
    except (OSError, RuntimeError) as error:
        log.warning("could not save the faiss index next to the gallery at %s (%s)", path, error)
        return index, "built in memory"
    return index, f"built and saved {path}"


def run_search(
    queries: np.ndarray, gallery: Gallery, k: int, faiss_threshold: int | None = 50000, factory: str = "Flat"
) -> tuple[np.ndarray, np.ndarray, str]:
    """Each query's top k gallery items: ``(cos, index, method)``, most similar first."""
    n = len(gallery.embeddings)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"k must be an integer ≥ 1, got {k!r}; e.g. k=5.")
    if k > n:
        raise UserError(f"k={k} but the gallery {gallery.source} has only {n} items; use k={n} or less.")
    if faiss_threshold is not None and n >= faiss_threshold:
        try:
            import faiss  # noqa: F401
        except ImportError:
            log.warning(
                "the gallery has %d items (faiss_threshold=%d) but faiss is not installed (pip install "
                "'simlearn[faiss]'); searching exactly without it",
                n,
                faiss_threshold,
            )
        else:
            index, how = faiss_index(gallery, factory)
            cos, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
            return cos, idx.astype(np.int64), f"faiss {factory} index ({how})"
    cos, idx = top_k(queries, gallery.embeddings, k)
    return cos, idx, "exact"


def search(cfg: DictConfig) -> list[dict[str, Any]]:
    """The whole command: load, embed, search, print, write ``results`` and ``grid``; return the results."""
    device = pick_device(cfg.get("device"))
    loaded = load_encoder(cfg.ckpt_path, device)
    find_queries(cfg.query, ImageLoader(loaded.preprocessing))  # a bad query fails before the gallery is embedded
    gallery = load_gallery(cfg.gallery, loaded, cfg, device)
    queries = load_queries(cfg.query, loaded, gallery.classes, int(cfg.get("batch_size") or 256), device)
    k = cfg.get("k", 5)
    cos, idx, method = run_search(queries.embeddings, gallery, k, cfg.get("faiss_threshold"), cfg.get("faiss_index"))
    results = []
    for q, path in enumerate(queries.paths):
        items = []
        for rank, (i, c) in enumerate(zip(idx[q].tolist(), cos[q].tolist(), strict=True), start=1):
            label = gallery.labels[i] if gallery.labels is not None else None
            known = queries.labels[q] is not None and label is not None
            items.append(
                {
                    "rank": rank,
                    "item": int(i),
                    "name": gallery.name(i),
                    "path": gallery.paths[i] if gallery.paths is not None else None,
                    "label": label,
                    "cos": round(float(c), 6),
                    "angle_deg": round(angle_deg(c), 3),
                    "hit": (label == queries.labels[q]) if known else None,
                }
            )
        results.append({"query": str(path), "label": queries.labels[q], "results": items})
    _print(results, gallery, queries, method)
    if cfg.get("results"):
        out = Path(cfg.results)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    if cfg.get("grid"):
        grid = _grid(Path(cfg.grid), results, loaded, int(cfg.get("grid_max_queries") or 16))
        Console().print(f"grid: {grid}", highlight=False)
    return results


def _print(results: list[dict[str, Any]], gallery: Gallery, queries: Queries, method: str) -> None:
    console = Console()
    for result in results:
        label = f" ({result['label']})" if result["label"] else ""
        table = Table(title=f"query {result['query']}{label}", title_justify="left")
        for column in ("rank", "gallery item", "label", "cosine", "angle"):
            table.add_column(column, justify="right" if column in ("rank", "cosine", "angle") else "left")
        if any(item["hit"] is not None for item in result["results"]):
            table.add_column("hit", justify="center")
        for item in result["results"]:
            cells = [
                str(item["rank"]),
                item["name"],
                item["label"] or "",
                f"{item['cos']:.4f}",
                f"{item['angle_deg']:.1f}°",
            ]
            if len(table.columns) == 6:
                cells.append({True: "[green]✓[/]", False: "[red]✗[/]", None: ""}[item["hit"]])
            table.add_row(*cells)
        console.print(table)
    skipped = f", {gallery.skipped} unreadable file(s) skipped" if gallery.skipped else ""
    summary = (
        f"{len(results)} quer{'y' if len(results) == 1 else 'ies'} against {len(gallery.embeddings)} gallery items "
        f"of {gallery.source}{skipped}; search: {method}"
    )
    if queries.skipped:
        summary += f"; {len(queries.skipped)} unreadable query file(s) skipped"
    labelled = [r for r in results if r["results"][0]["hit"] is not None]
    if labelled:
        hits = sum(r["results"][0]["hit"] for r in labelled)
        summary += f"; top-1 hits {hits}/{len(labelled)} labelled queries"
    console.print(summary, highlight=False)


def _grid(path: Path, results: list[dict[str, Any]], loaded: LoadedEncoder, max_queries: int) -> Path:
    channels = int(loaded.preprocessing.get("channels", 3))
    rows = []
    for result in results[:max_queries]:
        label = f"\n{result['label']}" if result["label"] else ""
        row = [GridTile(thumbnail(result["query"], channels), f"query{label}")]
        for item in result["results"]:
            image = thumbnail(item["path"], channels) if item["path"] and is_image_name(Path(item["path"])) else None
            caption = (
                f"#{item['rank']} {item['label'] or item['name']}\ncos {item['cos']:.2f} · {item['angle_deg']:.0f}°"
            )
            row.append(GridTile(image, caption, item["hit"]))
        rows.append(row)
    shown = f" (first {max_queries} of {len(results)} queries)" if len(results) > max_queries else ""
    return save_retrieval_grid(path, rows, title=f"Queries and their top {len(results[0]['results'])}{shown}")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="search")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    search(cfg)


if __name__ == "__main__":
    main()
