"""Figures of a split's embeddings: the embedding scatter (2-D directly, else t-SNE) coloured by class, and retrieval
grids (a query, then its top k, hits framed green and misses red). :class:`PlotsReport` writes them after testing
and logs them, with the class similarity heatmap, to wandb when a ``WandbLogger`` is among the trainer's loggers."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simlearn.data.base import EmbeddingDataModule, SplitDataset
from simlearn.data.images import thumbnail
from simlearn.errors import UserError
from simlearn.evaluation.evaluators import RetrievalEvaluator
from simlearn.organise.projection import TSNE_MIN_ITEMS, sample_rows, tsne_points
from simlearn.reports.similarity import class_similarity
from simlearn.retrieval.exact import top_k
from simlearn.retrieval.vectors import angle_deg, unit_rows

log = logging.getLogger(__name__)

__all__ = [
    "GridTile",
    "PlotsReport",
    "distinct_queries",
    "save_embedding_scatter",
    "save_retrieval_grid",
    "similarity_captions",
]

HIT_COLOR = "#1a9850"
MISS_COLOR = "#d73027"


@dataclass
class GridTile:
    """One cell of a retrieval grid: an image ((H, W) grey or (H, W, 3) RGB; None draws an empty cell), a caption,
    and whether it is a hit (True: green frame), a miss (False: red) or neither (None: the query, or no labels)."""

    image: np.ndarray | None
    caption: str
    hit: bool | None = None


def _decimals_apart(values: Sequence[float], least: int, most: int) -> int:
    """The fewest decimals, at least ``least``, at which the values that differ at ``most`` decimals print apart."""
    distinct = {f"{v:.{most}f}": v for v in values}  # one value per printed value at the most decimals
    for decimals in range(least, most):
        if len({f"{v:.{decimals}f}" for v in distinct.values()}) == len(distinct):
            return decimals
    return most


def similarity_captions(cosines: Sequence[float]) -> list[str]:
    """The similarity line of each result tile of one query, ``cos 0.87 · 30°``: with as many decimals as it takes to
    tell results of different similarity apart (at least 2 for the cosine, at most 6; 0 to 3 for the angle), so that
    five near-duplicates read ``cos 0.9998 · 1.1°``, ``cos 0.9995 · 1.8°``, … and not five times ``cos 1.00 · 1°``."""
    cosines = [float(c) for c in cosines]
    angles = [angle_deg(c) for c in cosines]
    cos_decimals, angle_decimals = _decimals_apart(cosines, 2, 6), _decimals_apart(angles, 0, 3)
    return [f"cos {c:.{cos_decimals}f} · {a:.{angle_decimals}f}°" for c, a in zip(cosines, angles, strict=True)]


def distinct_queries(
    ranked: Sequence[int],
    items: np.ndarray,
    neighbours: np.ndarray,
    labels: np.ndarray,
    count: int,
    shown: Sequence[int] = (),
) -> list[int]:
    """Up to ``count`` queries to show, taken from ``ranked`` (query rows, best first), each showing something the
    others do not: none is among another shown query's results or has one among its own (two near-identical images,
    each other's nearest neighbour, filled two rows of a grid with the same pictures), and each is of a class not
    shown yet, while ``ranked`` has such queries, then of any class.

    Row ``r`` is the query item ``items[r]``, of class ``labels[r]``, with the result items ``neighbours[r]``;
    ``shown``: rows already on the grid (the best ones, when choosing the worst), never chosen again nor related to.
    """
    results = [set(row.tolist()) for row in np.asarray(neighbours)]
    chosen: list[int] = []

    def related(r: int, s: int) -> bool:
        return r == s or int(items[r]) in results[s] or int(items[s]) in results[r]

    for new_classes_only in (True, False):
        for r in (int(r) for r in ranked):
            if len(chosen) >= count:
                return chosen
            if any(related(r, s) for s in [*shown, *chosen]):
                continue
            if new_classes_only and any(labels[s] == labels[r] for s in chosen):
                continue
            chosen.append(r)
    return chosen


def _tile_pixels(image: np.ndarray | None, size: int) -> np.ndarray:
    """An image as a (size, size, 3) uint8 tile: scaled to fit (nearest for tiny images), centred on white."""
    tile = np.full((size, size, 3), 255, dtype=np.uint8)
    if image is None:
        tile[:] = 232
        return tile
    from PIL import Image

    picture = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    scale = size / max(picture.size)
    resample = Image.Resampling.NEAREST if max(picture.size) * 2 <= size else Image.Resampling.BILINEAR
    width, height = max(1, round(picture.width * scale)), max(1, round(picture.height * scale))
    pixels = np.asarray(picture.resize((width, height), resample))
    top, left = (size - height) // 2, (size - width) // 2
    tile[top : top + height, left : left + width] = pixels
    return tile


def save_retrieval_grid(
    path: str | Path, rows: Sequence[Sequence[GridTile]], title: str | None = None, tile: int = 96
) -> Path:
    """A grid with one row per query: the query's tile, then its results' tiles (framed green / red by ``hit``).

    The tiles are assembled into one image and drawn on a single axes (fast even for many tiles)."""
    if not rows:
        raise UserError("a retrieval grid needs at least one query.")
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    frame, gap, caption = 4, 10, 30  # pixels: coloured frame, space between tiles, caption band above each tile
    cell_w, cell_h = tile + 2 * frame + gap, caption + tile + 2 * frame + gap
    head = 28 if title else 0
    mosaic = np.full((head + n_rows * cell_h, n_cols * cell_w, 3), 255, dtype=np.uint8)
    texts = []
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            y, x = head + r * cell_h + caption, c * cell_w + gap // 2
            color = {True: HIT_COLOR, False: MISS_COLOR}.get(cell.hit, "#404040" if c == 0 else "#c0c0c0")
            rgb = (np.array(matplotlib.colors.to_rgb(color)) * 255).astype(np.uint8)
            mosaic[y : y + tile + 2 * frame, x : x + tile + 2 * frame] = rgb
            mosaic[y + frame : y + frame + tile, x + frame : x + frame + tile] = _tile_pixels(cell.image, tile)
            texts.append((x + frame + tile / 2, y - 3, cell.caption))
    dpi = 100
    fig = Figure(figsize=(mosaic.shape[1] / dpi, mosaic.shape[0] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for x, y, text in texts:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=6.5, linespacing=1.1)
    if title:
        ax.text(mosaic.shape[1] / 2, head / 2, title, ha="center", va="center", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def save_embedding_scatter(
    path: str | Path,
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    max_points: int = 2000,
    seed: int = 0,
    title: str | None = None,
) -> str:
    """Scatter of the embeddings coloured by class: 2-D embeddings as they are (on the unit circle), higher ones
    through scikit-learn's t-SNE of a seeded random subsample of at most ``max_points`` items. Returns the method
    (``"2d"`` or ``"tsne"``)."""
    embeddings = unit_rows(embeddings)
    labels = np.asarray(labels)
    keep = sample_rows(len(embeddings), max_points, seed)
    embeddings, labels = embeddings[keep], labels[keep]
    if embeddings.shape[1] == 2:
        points, method = embeddings, "2d"
    elif len(embeddings) < TSNE_MIN_ITEMS:
        raise UserError(
            f"the embedding scatter needs at least {TSNE_MIN_ITEMS} items for t-SNE, got {len(embeddings)}."
        )
    else:
        points, method = tsne_points(embeddings, seed=seed), "tsne"
    fig = Figure(figsize=(6.5, 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if method == "2d":
        angles = np.linspace(0, 2 * np.pi, 361)
        ax.plot(np.cos(angles), np.sin(angles), color="0.8", lw=1, zorder=0)
        ax.set_aspect("equal")
    classes = np.unique(labels)
    for i, c in enumerate(classes):
        members = labels == c
        name = class_names[int(c)] if 0 <= int(c) < len(class_names) else str(int(c))
        color = _class_color(i, len(classes))
        ax.scatter(*points[members].T, s=9, alpha=0.7, lw=0, color=color, label=name)
    if len(classes) <= 20:
        ax.legend(fontsize=8, markerscale=2, loc="best", framealpha=0.85)
    subtitle = "2-D embeddings" if method == "2d" else f"t-SNE of {len(points)} {embeddings.shape[1]}-D embeddings"
    ax.set_title(title or subtitle, fontsize=10)
    if method == "tsne":
        ax.set_xticks([])
        ax.set_yticks([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return method


def _class_color(i: int, n: int) -> Any:
    """Distinct colours: matplotlib's tab10 / tab20 cycles for up to 10 / 20 classes, else the turbo colour map."""
    if n <= 20:
        return matplotlib.colormaps["tab10" if n <= 10 else "tab20"](i)
    return matplotlib.colormaps["turbo"](i / (n - 1))


def _display_image(image: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """A normalised (C, H, W) model input back to (H, W) or (H, W, 3) uint8 for display."""
    image = image.detach().float().cpu()
    if mean is not None and std is not None and len(mean) == image.shape[0] == len(std):
        image = image * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    else:  # unknown normalisation: stretch to the image's own range
        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-6)
    array = (image.clamp(0, 1) * 255).round().byte().numpy()
    return array[0] if array.shape[0] == 1 else array[:3].transpose(1, 2, 0)


class SplitImages:
    """Display images of a split's items by their dataset index (``EmbeddingSet.index``): thumbnails of the files
    for data read from files, else the dataset's tensors with the normalisation undone."""

    def __init__(self, dataset: SplitDataset, preprocessing: dict[str, Any] | None = None) -> None:
        self.dataset = dataset
        self.mean = (preprocessing or {}).get("mean")
        self.std = (preprocessing or {}).get("std")
        self.channels = int((preprocessing or {}).get("channels") or 3)
        self.position = {int(row): p for p, row in enumerate(dataset.indices.tolist())}

    def __call__(self, index: int) -> np.ndarray | None:
        if int(index) not in self.position:
            return None
        paths = self.dataset.paths_of([int(index)])
        if paths is not None:
            return thumbnail(paths[0], channels=self.channels)
        item = self.dataset[self.position[int(index)]]
        return None if item is None else _display_image(item["image"], self.mean, self.std)


@dataclass
class PlotsReport:
    """After testing, for the test split: ``embedding_scatter.png`` (:func:`save_embedding_scatter`) and
    ``retrieval_grid.png``: the ``worst`` and ``best`` queries by precision@k (ties: the more confident top-1 first),
    each followed by its ``k`` nearest other test items. With a ``WandbLogger`` among the trainer's loggers (and
    ``wandb: true``) both figures and the class similarity heatmap (``similarity.png``) are logged to wandb as
    images under ``plots/``. Returns no metrics.
    """

    max_points: int = 2000
    k: int = 5
    worst: int = 4
    best: int = 4
    seed: int = 0
    wandb: bool = True
    scatter_name: str = "embedding_scatter.png"
    grid_name: str = "retrieval_grid.png"

    def __post_init__(self) -> None:
        for key in ("max_points", "k"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"reports.plots.{key} must be an integer ≥ 1, got {value!r}.")

    def __call__(
        self, trainer: Any, model: Any, datamodule: EmbeddingDataModule, output_dir: str | Path
    ) -> dict[str, float]:
        started, started_cpu = time.perf_counter(), time.process_time()
        output_dir = Path(output_dir)
        result = model.results["test"]
        label_field = datamodule.label_field
        class_names = list(datamodule.class_names)
        if type(getattr(model, "evaluator", None)).__name__ == "PairEvaluator" or label_field not in result.fields:
            log.info("plots: the test split has no class labels (%r); no plots", label_field)
            return {}
        labels = np.asarray(result.fields[label_field])
        figures: dict[str, Path] = {}
        # the figures are extras: one that cannot be drawn is reported and skipped, it never fails the run
        if len(result.embeddings) >= 5:
            path = output_dir / self.scatter_name
            title = f"Test embeddings by {label_field}"
            if self._draw(
                "embedding scatter",
                save_embedding_scatter,
                path,
                result.embeddings,
                labels,
                class_names,
                max_points=self.max_points,
                seed=self.seed,
                title=title,
            ):
                figures["embedding_scatter"] = path
        if len(result.embeddings) > self.k and "test" in datamodule.datasets:
            path = output_dir / self.grid_name
            images = SplitImages(datamodule.datasets["test"], getattr(model, "config", {}).get("preprocessing"))
            if self._draw("retrieval grid", self._grid, path, result, labels, class_names, images):
                figures["retrieval_grid"] = path
        loggers = [lg for lg in getattr(trainer, "loggers", []) if _is_wandb(lg)] if self.wandb else []
        if loggers:

            def heatmap(path: Path) -> None:
                similarity = class_similarity(result.embeddings, labels, class_names=class_names or None)
                # the same file (and content) as write_evaluation writes after the reports
                similarity.save_heatmap(path, title=f"Mean cosine similarity between {label_field} classes")

            if self._draw("similarity heatmap", heatmap, output_dir / "similarity.png"):
                figures["similarity"] = output_dir / "similarity.png"
            for logger in loggers:
                for name, path in figures.items():
                    logger.log_image(key=f"plots/{name}", images=[str(path)])
        log.info(
            "plots: %s in %.2f s (%.2f s CPU)",
            ", ".join(p.name for p in figures.values()),
            time.perf_counter() - started,
            time.process_time() - started_cpu,
        )
        return {}

    @staticmethod
    def _draw(what: str, function: Any, *args: Any, **kwargs: Any) -> bool:
        try:
            function(*args, **kwargs)
        except Exception as error:  # any failure: see __call__
            log.warning("plots: could not draw the %s (%s: %s); skipped", what, type(error).__name__, error)
            return False
        return True

    def _grid(self, path: Path, result: Any, labels: np.ndarray, class_names: list[str], images: SplitImages) -> Path:
        # the protocol of the test metrics: queries against the gallery where the data marks them, else every item
        # against all the others
        roles = RetrievalEvaluator.roles(result.fields)
        every = np.arange(len(labels))
        queries, gallery = (every, every) if roles is None else (np.flatnonzero(roles[0]), np.flatnonzero(roles[1]))
        if len(queries) == 0 or len(gallery) == 0:
            raise UserError(f"the test split has {len(queries)} queries and {len(gallery)} gallery items.")
        embeddings = np.asarray(result.embeddings)
        cos, columns = top_k(embeddings[queries], embeddings[gallery], self.k, exclude_self=roles is None)
        neighbours = gallery[columns]  # items of the split, as the queries
        hits = labels[neighbours] == labels[queries][:, None]
        precision = hits.mean(axis=1)
        confidence = cos[:, 0]
        best = distinct_queries(np.lexsort((-confidence, -precision)), queries, neighbours, labels[queries], self.best)
        worst = distinct_queries(
            np.lexsort((-confidence, precision)), queries, neighbours, labels[queries], self.worst, shown=best
        )

        def name(label: int) -> str:
            return class_names[int(label)] if 0 <= int(label) < len(class_names) else str(int(label))

        rows = []
        k = columns.shape[1]
        for kind, shown in (("worst", worst), ("best", best)):
            for r in shown:
                q = queries[r]
                row = [GridTile(images(result.index[q]), f"{kind} query\n{name(labels[q])} · P@{k} {precision[r]:.1f}")]
                captions = similarity_captions(cos[r])
                for rank, (n, caption) in enumerate(zip(neighbours[r], captions, strict=True), start=1):
                    hit = bool(labels[n] == labels[q])
                    row.append(GridTile(images(result.index[n]), f"#{rank} {name(labels[n])}\n{caption}", hit))
                rows.append(row)
        return save_retrieval_grid(path, rows, title=f"Worst and best test queries and their top {k}")


def _is_wandb(logger: Any) -> bool:
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(logger, WandbLogger)
