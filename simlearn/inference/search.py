"""Reverse image search: ``simlearn-search ckpt_path=PATH query=IMAGE_OR_FOLDER gallery=FOLDER_OR_NPZ k=5``.

The query images are embedded with the checkpoint's encoder and preprocessing; the gallery is a folder of images
(embedded too, and cached), an npz of embeddings written by ``simlearn-embed``, or a LanceDB table it wrote
(``simlearn-embed db=PATH``, searched through LanceDB: :mod:`simlearn.retrieval.vectordb`). Each query's k most
similar gallery
items are printed with their cosine similarity and angle, written to ``search.json`` and drawn in a grid.
The search is the one of :mod:`simlearn.retrieval.exact`: exact, with cosines in float64 and ties to the lower
gallery index. Galleries of at least ``faiss_threshold`` items are searched through a faiss inner-product index saved
next to their embeddings (exact for ``faiss_index=Flat``; the output says when an approximate one was used). A code
gallery (a ``head=hash`` model's) is searched by Hamming distance (``code_index``), its ``rerank`` nearest re-ranked
by the float embeddings when set (:mod:`simlearn.retrieval.gallery`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from simlearn.data.images import (
    DECODE_ERRORS,
    ImageLoader,
    find_images,
    folder_label,
    is_image_name,
    thumbnail,
)
from simlearn.errors import UserError
from simlearn.inference import InferenceModel, load_model, pick_device
from simlearn.reports.plots import GridTile, save_retrieval_grid, similarity_captions
from simlearn.retrieval.codes import check_code_search
from simlearn.retrieval.gallery import Gallery, diverged_hint, load_gallery, non_finite_rows, run_search
from simlearn.retrieval.postprocess import postprocessors

log = logging.getLogger(__name__)

__all__ = ["Queries", "find_queries", "load_queries", "search"]


@dataclass
class Queries:
    paths: list[Path]
    embeddings: np.ndarray
    labels: list[str | None]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


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
            f"{diverged_hint(model)}"
        )
    labels = []
    for file in embedded.paths:
        name = (folder_label(file, root) if root is not None else None) or file.parent.name
        labels.append(name if name in gallery_classes else None)
    return Queries(paths=embedded.paths, embeddings=embedded.embeddings, labels=labels, skipped=embedded.failed)


# -- searching -----------------------------------------------------------------------------------------------------
def search(cfg: DictConfig) -> list[dict[str, Any]]:
    """The whole command: load, embed, search, print, write ``results`` and ``grid``; return the results."""
    steps = postprocessors(cfg.get("postprocess"), key="postprocess")  # a wrong step: one line before any loading
    code_search, rerank = check_code_search(cfg.get("code_index"), cfg.get("rerank"))
    device = pick_device(cfg.get("device"))
    model = load_model(cfg.ckpt_path, device)
    find_queries(cfg.query, model.loader)  # a bad query fails before the gallery is embedded
    gallery = load_gallery(cfg.gallery, model, cfg)
    queries = load_queries(cfg.query, model, gallery.classes, int(cfg.get("batch_size") or 256))
    k = cfg.get("k", 5)
    factory = cfg.get("faiss_index") or "Flat"
    found = run_search(queries.embeddings, gallery, k, cfg.get("faiss_threshold"), factory, steps, code_search, rerank)
    method = found.method
    results = []
    for q, path in enumerate(queries.paths):
        items = found.rows(q, queries.labels[q])
        results.append({"query": str(path), "class_name": queries.labels[q], "results": items})
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
        label = f" ({result['class_name']})" if result["class_name"] else ""
        table = Table(title=f"query {result['query']}{label}", title_justify="left")
        for column in ("rank", "gallery item", "class", "cosine", "angle"):
            table.add_column(column, justify="right" if column in ("rank", "cosine", "angle") else "left")
        if any(item["same_class"] is not None for item in result["results"]):
            table.add_column("same class", justify="center")
        for item in result["results"]:
            cells = [
                str(item["rank"]),
                item["name"],
                item["class_name"] or "",
                f"{item['cosine']:.4f}",
                f"{item['angle_deg']:.1f}°",
            ]
            if len(table.columns) == 6:
                cells.append({True: "[green]✓[/]", False: "[red]✗[/]", None: ""}[item["same_class"]])
            table.add_row(*cells)
        console.print(table)
    skipped = f", {gallery.skipped} unreadable file(s) skipped" if gallery.skipped else ""
    summary = (
        f"{len(results)} quer{'y' if len(results) == 1 else 'ies'} against {len(gallery.embeddings)} gallery items "
        f"of {gallery.source}{skipped}; search: {method}"
    )
    if queries.skipped:
        summary += f"; {len(queries.skipped)} unreadable query file(s) skipped"
    labelled = [r for r in results if r["results"][0]["same_class"] is not None]
    if labelled:
        hits = sum(r["results"][0]["same_class"] for r in labelled)
        summary += f"; top-1 hits {hits}/{len(labelled)} labelled queries"
    console.print(summary, highlight=False)


def _grid(path: Path, results: list[dict[str, Any]], model: InferenceModel, max_queries: int) -> Path:
    channels = int(model.preprocessing.get("channels", 3))
    rows = []
    for result in results[:max_queries]:
        label = f"\n{result['class_name']}" if result["class_name"] else ""
        row = [GridTile(thumbnail(result["query"], channels), f"query{label}")]
        similarities = similarity_captions([item["cosine"] for item in result["results"]])  # decimals to tell apart
        for item, similarity in zip(result["results"], similarities, strict=True):
            image = thumbnail(item["path"], channels) if item["path"] and is_image_name(Path(item["path"])) else None
            caption = f"#{item['rank']} {item['class_name'] or item['name']}\n{similarity}"
            row.append(GridTile(image, caption, item["same_class"]))
        rows.append(row)
    shown = f" (first {max_queries} of {len(results)} queries)" if len(results) > max_queries else ""
    return save_retrieval_grid(path, rows, title=f"Queries and their top {len(results[0]['results'])}{shown}")
