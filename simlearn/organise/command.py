"""``simlearn-organise``: a gallery's clusters, near-duplicate groups and outliers, written as files a person reads.

The gallery is read as ``simlearn-search`` reads it (:func:`simlearn.retrieval.load_gallery`: an image folder, an
npz of simlearn-embed, a LanceDB table), or, without one, is every split of the checkpoint's data (or of ``data=``)
embedded as ``simlearn-embed`` embeds them; then the leak check runs too (:func:`simlearn.organise.leaks.leaks`).
The model is the checkpoint's (``ckpt_path=``), or with ``embedder=pixels`` the raw pixels
(:func:`simlearn.inference.pixels.pixel_model`), which embed image files only: a folder gallery.
The work is :mod:`simlearn.organise`'s (no N × N matrix); this module only checks the input, writes the tables,
the summary and the contact sheets (through the one grid of :func:`simlearn.reports.plots.save_retrieval_grid`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console

from simlearn.data.base import SplitDataset
from simlearn.data.images import find_images, is_image_name, thumbnail
from simlearn.data.in_memory import TensorImageDataset
from simlearn.errors import UserError
from simlearn.inference import InferenceModel, load_model, pick_device
from simlearn.inference.pixels import (
    PIXELS_CHANNELS,
    PIXELS_SIZE,
    check_pixel_options,
    pixel_gallery_bytes,
    pixel_model,
)
from simlearn.organise.clusters import (
    METHODS,
    NOISE,
    Clusters,
    choose_k,
    cluster_embeddings,
    k_candidates,
    unit_embeddings,
)
from simlearn.organise.copy_check import CopyCheck, check_copy_options, gallery_copy_check
from simlearn.organise.duplicates import (
    EXACT_LIMIT,
    DuplicateGroups,
    PairCollector,
    check_search_options,
    check_threshold,
    neighbour_index,
    self_neighbours,
)
from simlearn.organise.leaks import Leaks, leaks, write_leaks
from simlearn.organise.outliers import Uniqueness, UniquenessScores, check_uniqueness_k
from simlearn.reports.plots import GridTile, save_retrieval_grid
from simlearn.retrieval.gallery import Gallery, load_gallery
from simlearn.run_dir import check_writable

log = logging.getLogger(__name__)

__all__ = [
    "DataGallery",
    "DatasetImages",
    "Organised",
    "EMBEDDERS",
    "check_embedder",
    "check_options",
    "data_gallery",
    "embed_data_gallery",
    "embedder_model",
    "organise",
    "organise_gallery",
    "write_leaks",
    "write_outputs",
]


@dataclass
class Organised:
    """What the command found for a gallery: its clusters, duplicate groups and uniqueness."""

    gallery: Gallery
    clusters: Clusters
    duplicates: DuplicateGroups
    uniqueness: Uniqueness
    #: the held-out items with a near-copy in the training split (a gallery made of a dataset's splits only)
    leaks: Leaks | None = None
    #: item → its pixels for the contact sheets, where the items have no image files (a dataset held in memory)
    images: Callable[[int], np.ndarray | None] | None = None
    #: the planted-copy check of the model on the gallery (:mod:`simlearn.organise.copy_check`)
    copy_check: CopyCheck | None = None


def check_options(cfg: DictConfig) -> None:
    """The options that need no model, checked before it loads: one line each."""
    method = cfg.get("method", "kmeans")
    if method not in METHODS:
        raise UserError(
            f"method={method!r} is not one of {', '.join(METHODS)}; e.g. method=kmeans k=10 or method=hdbscan."
        )
    if method == "kmeans":
        k_candidates(_plain(cfg.get("k")))
    check_threshold(cfg.get("threshold", 0.999))
    check_search_options(cfg)  # max_neighbours, exact_limit, faiss_index, faiss_params
    if cfg.get("gallery") is not None and cfg.get("data"):
        raise UserError(
            "give gallery= (a folder, npz or LanceDB of items to organise) or data= (a dataset whose splits are "
            "organised and checked for leaks), not both."
        )
    for name, low, why, nullable in WHOLE_OPTIONS:
        if name == "min_cluster_size" and method == "hdbscan":  # a cluster of one item is not a cluster
            low, why = 2, "the fewest items of an HDBSCAN cluster; one item is not a cluster"
        if name in cfg:  # an option left out takes its default (a config made in code may leave some out)
            check_whole(name, cfg.get(name), low, why, nullable)
    for name in ("sheets", "cache", "copy_check"):
        value = cfg.get(name, True)
        if not isinstance(value, bool) and not (name == "sheets" and value is None):
            raise UserError(f"{name}={value!r} must be true or false; e.g. {name}=false.")
    check_copy_options(cfg)


#: the unreadable files organise.json names (the first, sorted; ``skipped`` counts them all)
SKIPPED_LISTED = 100

#: the whole-number options: name, the least valid value, what the number is, whether null is valid (none of the
#: sheets; the default batch)
WHOLE_OPTIONS = (
    ("uniqueness_k", 1, "the neighbours each item is compared with", False),
    ("kmeans_restarts", 1, "the seeded k-means starts, the tightest kept", False),
    ("min_cluster_size", 1, "the fewest items of an HDBSCAN cluster", False),
    ("sheet_clusters", 0, "the largest clusters that get a contact sheet; 0: none", True),
    ("sheet_columns", 1, "items per contact-sheet row", False),
    ("sheet_nearest_rows", 0, "rows of each cluster's items nearest its centre", True),
    ("sheet_farthest_rows", 0, "rows of each cluster's farthest items", True),
    ("sheet_groups", 0, "duplicate groups on their sheet; 0: none", True),
    ("sheet_outliers", 0, "outliers on their sheet; 0: none", True),
    ("batch_size", 1, "images embedded at once", True),
)


def check_whole(name: str, value: Any, low: int, why: str, nullable: bool = False) -> None:
    """``value`` is a whole number ≥ ``low`` (or null where ``nullable``), or one UserError line naming ``name``."""
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name}={value!r} must be a whole number ≥ {low} ({why}); e.g. {name}={max(low, 5)}.")


#: what ``embedder=`` takes: the model of ``ckpt_path=``, or the raw pixels (no model, nothing to train)
EMBEDDERS = ("model", "pixels")


def check_embedder(cfg: DictConfig) -> None:
    """``embedder=model`` needs ``ckpt_path=``; ``embedder=pixels`` takes none, checks ``pixels.size`` and
    ``pixels.channels``, and needs ``gallery=`` (pixels have no dataset to rebuild: ``data=`` is refused)."""
    embedder = cfg.get("embedder", "model")
    if embedder not in EMBEDDERS:
        raise UserError(
            f"embedder={embedder!r} is not one of {', '.join(EMBEDDERS)}; e.g. embedder=model ckpt_path=…/last.ckpt, "
            f"or embedder=pixels (the raw pixels, no model)."
        )
    if embedder == "model":
        if cfg.get("ckpt_path") is None:
            raise UserError(
                "missing ckpt_path=: give the model (a checkpoint or a model folder), e.g. ckpt_path=…/last.ckpt, or "
                "embedder=pixels to compare the images' raw pixels."
            )
        return
    if cfg.get("ckpt_path") is not None:
        raise UserError(
            f"embedder=pixels compares raw pixels and uses no model, but ckpt_path={cfg.ckpt_path} was given too: "
            f"drop ckpt_path=, or drop embedder=pixels to use the model."
        )
    if cfg.get("gallery") is None:
        raise UserError(
            "embedder=pixels embeds image files: give gallery=FOLDER (a folder of images); a dataset's splits "
            "(data=, and the leak check) need a model: ckpt_path=…"
        )
    pixels = cfg.get("pixels") or {}
    size, channels = check_pixel_options(pixels.get("size", PIXELS_SIZE), pixels.get("channels", PIXELS_CHANNELS))
    folder = Path(str(cfg.gallery))
    if folder.is_dir():  # before embedding: too large a side for the gallery ends in the OOM killer, with no word
        items = len(find_images(folder))
        need, have = pixel_gallery_bytes(items, size, channels, int(cfg.get("batch_size") or 256)), available_memory()
        if have is not None and need > have:
            fits = max(1, int(size * (have / need) ** 0.5))
            raise UserError(
                f"pixels.size={size} makes {size * size * channels:,} values per image: the {items:,} images of "
                f"gallery={str(folder)!r} would need about {_size(need)}, and {_size(have)} are available; give a "
                f"smaller pixels.size (about {fits} fits) or fewer images."
            )


def _size(n: int) -> str:
    """Bytes as a person reads them: GiB from one GiB on, MiB below."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def available_memory() -> int | None:
    """The memory this process can have now: Linux's MemAvailable (free pages plus the caches it can drop), else the
    free pages, None where the system says neither."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def embedder_model(cfg: DictConfig, device: Any) -> InferenceModel:
    """The model a gallery is embedded (and the copy check run) with: the pixels with ``embedder=pixels``, else the
    checkpoint's or model folder's of ``ckpt_path``."""
    if cfg.get("embedder", "model") == "pixels":
        pixels = cfg.get("pixels") or {}
        return pixel_model(pixels.get("size", PIXELS_SIZE), pixels.get("channels", PIXELS_CHANNELS), device)
    return load_model(cfg.ckpt_path, device)


def _plain(value: Any) -> Any:
    """A config value as plain Python (a ``k=[5,30]`` list from the command line is a ListConfig)."""
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def _labels(gallery: Gallery) -> list[str] | None:
    """The gallery's labels when every item has one (NMI/AMI need them all), else None."""
    if gallery.labels is None or any(label is None for label in gallery.labels):
        return None
    return [str(label) for label in gallery.labels]


def organise_gallery(gallery: Gallery, cfg: DictConfig) -> Organised:
    """Cluster the gallery, find its near-duplicate groups and each item's uniqueness, as ``cfg`` says."""
    n = len(gallery.embeddings)
    if n == 0:
        raise UserError(f"gallery={str(gallery.source)!r} has no items; give a gallery with at least 2 items.")
    method = str(cfg.get("method", "kmeans"))
    k = _plain(cfg.get("k"))
    restarts = int(cfg.get("kmeans_restarts", 5))
    if method == "kmeans" and isinstance(k, int) and k > n:
        raise UserError(f"k={k} clusters is more than the {n} items of the gallery; give k from 1 to {n}.")
    if method == "hdbscan" and int(cfg.get("min_cluster_size", 5)) > n:
        raise UserError(
            f"min_cluster_size={cfg.get('min_cluster_size')} is more than the {n} items of the gallery: every item "
            f"would be noise; give min_cluster_size from 2 to {n}."
        )
    if method == "kmeans" and not isinstance(k, int):  # a range: the k of the highest silhouette
        clusters = choose_k(gallery.embeddings, k_candidates(k, n), _labels(gallery), restarts)
    else:
        clusters = cluster_embeddings(
            gallery.embeddings,
            k=k if method == "kmeans" else None,
            method=method,
            min_cluster_size=int(cfg.get("min_cluster_size", 5)),
            labels=_labels(gallery),
            restarts=restarts,
        )
    x = unit_embeddings(gallery.embeddings)
    threshold = check_threshold(cfg.get("threshold", 0.999))
    uniqueness_k = check_uniqueness_k(cfg.get("uniqueness_k", 5), n)
    duplicate_k = min(int(cfg.get("max_neighbours", 32)), n - 1)
    # one index (beyond exact_limit items) and one neighbour search for both: each item's nearest others, as many
    # as the longer of the two lists needs (the exact search's lists are ordered, so each takes its first columns)
    index = neighbour_index(
        x, int(cfg.get("exact_limit", EXACT_LIMIT)), str(cfg.get("faiss_index") or "HNSW32"), cfg.get("faiss_params")
    )
    pairs, scores = PairCollector(n, threshold, duplicate_k), UniquenessScores(n, uniqueness_k)
    for start, sims, cols in self_neighbours(x, max(duplicate_k, uniqueness_k), index):
        pairs.add(start, sims, cols)
        scores.add(start, sims, cols)
    pairs.complete(x, index)  # the items whose list was all pairs, searched deeper: every pair ≥ threshold
    duplicates, unusual = pairs.groups(index), scores.result(index)
    return Organised(gallery=gallery, clusters=clusters, duplicates=duplicates, uniqueness=unusual)


def organise(cfg: DictConfig) -> dict[str, Any]:
    """The whole command: check, load the model and the gallery, organise, write the files; return the summary."""
    check_options(cfg)
    check_embedder(cfg)  # the command's own (serve's organise options have the service's model)
    out = Path(cfg.paths.output_dir)
    if cfg.get("sheets", True) and (out / "sheets").exists():  # the run dir itself was checked when it was claimed
        check_writable(out / "sheets", "the contact sheets' folder")
    device = pick_device(cfg.get("device"))
    data = None
    if cfg.get("gallery") is None:
        data, model = data_gallery(cfg, device)
        gallery = data.gallery
    else:
        model = embedder_model(cfg, device)
        # clusters and duplicate groups of two models' embeddings mean nothing: another model's gallery is refused
        gallery = load_gallery(cfg.gallery, model, cfg, refuse_other_model=True)
    found = organise_gallery(gallery, cfg)
    found.copy_check = gallery_copy_check(model, gallery, found.duplicates.threshold, cfg)
    if data is not None:
        found.leaks = data.leaks(found.duplicates.threshold)
        found.images = data.images
    channels = int(model.preprocessing.get("channels", 3))
    try:
        summary = write_outputs(found, out, cfg, channels)
    except OSError as error:  # a full disk, a folder made read-only meanwhile: one line, not a traceback
        raise UserError(
            f"could not write the results into {str(out)!r}: {error.strerror or error} ({error.filename}); free or "
            f"unlock it, or choose another hydra.run.dir=DIR."
        ) from error
    _print(summary)
    return summary


class DatasetImages:
    """The pixels of a data gallery's items, by gallery row, for the contact sheets: an in-memory dataset's stored
    images (:meth:`~simlearn.data.in_memory.TensorImageDataset.pixels`, as people see them); None for items of other
    data (files: their paths are their images)."""

    def __init__(self, datasets: Mapping[str, SplitDataset], splits: Sequence[str], index: Sequence[int]) -> None:
        self.datasets, self.splits, self.index = datasets, list(splits), [int(i) for i in index]

    def __call__(self, row: int) -> np.ndarray | None:
        dataset = self.datasets.get(self.splits[row])
        if not isinstance(dataset, TensorImageDataset):
            return None
        pixels = dataset.pixels([self.index[row]])[0].numpy()
        return pixels[..., 0] if pixels.shape[-1] == 1 else pixels[..., :3]


@dataclass
class DataGallery:
    """Every split of a dataset embedded as one gallery: the gallery, each item's split and the items' pixels."""

    gallery: Gallery
    splits: list[str]
    images: DatasetImages

    def leaks(self, threshold: float) -> Leaks:
        """The held-out items with a near-copy (cos ≥ ``threshold``) in the training split
        (:func:`simlearn.organise.leaks.leaks`), named by their files (or ``<split>[<index>]``)."""
        paths = [_path(self.gallery, i) for i in range(len(self.gallery.embeddings))]
        return leaks(self.gallery.embeddings, paths, self.splits, threshold)


def embed_data_gallery(encoder: Any, datamodule: Any, device: Any, batch_size: int | None = None) -> DataGallery:
    """Every split of a set-up data module with items, embedded by ``encoder`` as simlearn-embed embeds them
    (evaluation transforms, also for train), as one gallery: what ``simlearn-organise`` without ``gallery=`` and the
    leak check of training (``reports.leaks``) work on."""
    from simlearn.inference.embedding_files import embed_splits, split_arrays

    results = embed_splits(encoder, datamodule, None, device, batch_size)
    embeddings, labels, paths, ids, splits, index = [], [], [], [], [], []
    for split, result in results.items():
        arrays = split_arrays(result, datamodule, split)
        names = arrays["class_names"]
        embeddings.append(arrays["embeddings"])
        if "labels" in arrays:
            labels += [str(names[int(v)]) if 0 <= int(v) < len(names) else str(v) for v in arrays["labels"]]
        ids += [f"{split}[{int(i)}]" for i in arrays["index"]]
        index += [int(i) for i in arrays["index"]]
        paths += [str(p) for p in arrays["paths"]] if "paths" in arrays else []
        splits += [split] * len(arrays["embeddings"])
    dim = int(encoder.embedding_dim)
    gallery = Gallery(
        embeddings=np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float32),
        labels=labels if len(labels) == len(ids) else None,
        paths=paths if len(paths) == len(ids) else None,
        source=Path(f"data {datamodule.name}"),
        index_path=None,
        ids=ids,
    )
    return DataGallery(gallery, splits, DatasetImages(datamodule.datasets, splits, index))


def data_gallery(cfg: DictConfig, device: Any) -> tuple[DataGallery, Any]:
    """Every split of the checkpoint's data (or ``cfg.data``'s) embedded as simlearn-embed embeds it, as one gallery
    (:func:`embed_data_gallery`), and the inference model."""
    from simlearn.inference.embedding_files import rebuild

    datamodule, model = rebuild(cfg)
    model.to(device)
    return embed_data_gallery(model.encoder, datamodule, model.device, cfg.get("batch_size")), model


# -- files -----------------------------------------------------------------------------------------------------------
def _path(gallery: Gallery, i: int) -> str:
    return gallery.paths[i] if gallery.paths is not None else gallery.name(i)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)))


def write_outputs(found: Organised, out: Path, cfg: DictConfig, channels: int = 3) -> dict[str, Any]:
    """Write clusters.csv, clusters_summary.csv, duplicates.csv, outliers.csv, organise.json and the contact sheets
    into ``out``; return the summary (what organise.json holds)."""
    out.mkdir(parents=True, exist_ok=True)
    gallery, clusters, duplicates, unusual = found.gallery, found.clusters, found.duplicates, found.uniqueness
    n = len(gallery.embeddings)
    labels = gallery.labels
    x = unit_embeddings(gallery.embeddings)
    files: dict[str, str] = {}

    rows = [
        [i, _path(gallery, i), labels[i] if labels else "", int(clusters.cluster[i]), _cell(clusters.cosine[i])]
        for i in range(n)
    ]
    files["clusters"] = str(_write_csv(out / "clusters.csv", ["item", "path", "label", "cluster", "cosine"], rows))
    clean = _labels(gallery)
    cluster_rows = clusters.summary(clean)
    rows = [
        [row["cluster"], row["size"], f"{row['mean_cosine']:.6f}", _label_counts(row.get("labels"))]
        for row in cluster_rows
    ]
    files["clusters_summary"] = str(
        _write_csv(out / "clusters_summary.csv", ["cluster", "size", "mean_cosine", "labels"], rows)
    )
    rows = []
    for g, items in enumerate(duplicates.groups):
        for position, i in enumerate(items):
            rows.append([g, int(i), _path(gallery, int(i)), f"{_cosine(x[i], x[items[0]]):.6f}", position == 0])
    files["duplicates"] = str(_write_csv(out / "duplicates.csv", ["group", "item", "path", "cosine", "keep"], rows))
    rows = [
        [rank, int(i), _path(gallery, int(i)), f"{unusual.score[i]:.6f}"]
        for rank, i in enumerate(unusual.order, start=1)
    ]
    files["outliers"] = str(_write_csv(out / "outliers.csv", ["rank", "item", "path", "uniqueness"], rows))
    if cfg.get("sheets", True):
        files.update(write_sheets(found, out / "sheets", cfg, channels))
    if found.leaks is not None:
        files["leaks"] = str(write_leaks(found.leaks, out / "leaks.csv"))

    in_groups = int(sum(len(items) for items in duplicates.groups))
    summary: dict[str, Any] = {
        "gallery": str(gallery.source),
        "items": n,
        # unreadable image files of a folder gallery, left out (the warning names a few when they are embedded)
        "skipped": int(gallery.skipped),
        "skipped_files": list(gallery.skipped_files[:SKIPPED_LISTED]),
        "clusters": {
            "method": clusters.method,
            "k": len(clusters.centres),
            "noise": int((clusters.cluster == NOISE).sum()),
            "largest": cluster_rows[:10],
            **clusters.metrics,
            **({"k_choice": clusters.selection} if clusters.selection else {}),
        },
        "duplicates": {
            "threshold": duplicates.threshold,
            "method": duplicates.method,
            "exact": duplicates.exact,
            "pairs": len(duplicates.pairs),
            "groups": len(duplicates.groups),
            "items_in_groups": in_groups,
            "to_remove": in_groups - len(duplicates.groups),
            # items whose max_neighbours nearest others were all pairs, searched again deeper for the rest
            "deepened": duplicates.deepened,
            # of those, the items with more than DEEPEN_LIMIT (256) near-copies: their nearest 257 pairs listed
            "capped": duplicates.capped,
        },
        "outliers": {
            "uniqueness_k": unusual.k,
            "top": [
                {"item": int(i), "path": _path(gallery, int(i)), "uniqueness": float(unusual.score[i])}
                for i in unusual.order[:10]
            ],
        },
        "files": files,
    }
    if found.leaks is not None:
        summary["leaks"] = {
            "threshold": found.leaks.threshold,
            "checked": found.leaks.checked,
            "counts": found.leaks.counts,
            "first": [vars(leak) for leak in found.leaks.leaks[:10]],
        }
    if found.copy_check is not None:
        summary["copy_check"] = found.copy_check.summary()
    (out / "organise.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["files"]["summary"] = str(out / "organise.json")
    return summary


def _cell(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.6f}"


def _label_counts(counts: dict[str, int] | None) -> str:
    return " ".join(f"{name}:{count}" for name, count in (counts or {}).items())


# -- contact sheets ----------------------------------------------------------------------------------------------------
def _tile(found: Organised, i: int, caption: str, channels: int, hit: bool | None = None) -> GridTile:
    gallery = found.gallery
    path = gallery.paths[i] if gallery.paths is not None else None
    if path and is_image_name(Path(path)):
        image = thumbnail(path, channels)
    else:  # no file: the item's pixels where the gallery came from data in memory
        image = found.images(i) if found.images is not None else None
    return GridTile(image, caption, hit)


def _short(gallery: Gallery, i: int, width: int = 16) -> str:
    name = Path(gallery.name(i)).name
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _rows(tiles: list[GridTile], columns: int) -> list[list[GridTile]]:
    return [tiles[start : start + columns] for start in range(0, len(tiles), columns)]


def _caption_tile(found: Organised, i: int, head: str, value: str, channels: int, hit: bool | None = None) -> GridTile:
    return _tile(found, i, f"{head}{_short(found.gallery, i)}\n{value}", channels, hit)


def write_sheets(found: Organised, folder: Path, cfg: DictConfig, channels: int = 3) -> dict[str, str]:
    """The contact sheets: ``cluster_<c>.png`` for the largest clusters (the items nearest the centre, then a row of
    the farthest, framed red), ``duplicates.png`` (one row per largest group, the kept item first, framed green) and
    ``outliers.png`` (the most unusual items, most unusual first). Returns their paths by name."""
    gallery, clusters, duplicates, unusual = found.gallery, found.clusters, found.duplicates, found.uniqueness
    columns = max(1, int(cfg.get("sheet_columns") or 8))
    nearest_rows, farthest_rows = int(cfg.get("sheet_nearest_rows") or 3), int(cfg.get("sheet_farthest_rows") or 0)
    x = unit_embeddings(gallery.embeddings)
    written: dict[str, str] = {}
    for c in range(min(int(cfg.get("sheet_clusters") or 0), len(clusters.centres))):
        members = np.flatnonzero(clusters.cluster == c)
        order = members[np.lexsort((members, -clusters.cosine[members]))]  # nearest the centre first
        near = order[: nearest_rows * columns].tolist()
        shown = set(near)
        far = [i for i in order[::-1][: farthest_rows * columns].tolist() if i not in shown][::-1]
        cos = clusters.cosine
        rows = _rows([_caption_tile(found, i, "", f"cos {cos[i]:.3f}", channels) for i in near], columns)
        rows += _rows([_caption_tile(found, i, "far: ", f"cos {cos[i]:.3f}", channels, False) for i in far], columns)
        title = f"cluster {c}: {len(members)} items, the nearest its centre" + (", then the farthest" if far else "")
        written[f"sheet_cluster_{c}"] = str(save_retrieval_grid(folder / f"cluster_{c}.png", rows, title=title))
    groups = duplicates.groups[: int(cfg.get("sheet_groups") or 0)]
    if groups:
        rows = []
        for g, items in enumerate(groups):
            first = int(items[0])
            row = [_caption_tile(found, first, f"group {g} keep\n", "", channels, True)]
            for i in items[1:columns].tolist():
                row.append(_caption_tile(found, i, "", f"cos {_cosine(x[i], x[first]):.4f}", channels, False))
            rows.append(row)
        # short: a sheet of pairs is two tiles wide, and the grid does not widen for its title
        title = f"{len(groups)} of {len(duplicates.groups)} groups · cos ≥ {duplicates.threshold}"
        written["sheet_duplicates"] = str(save_retrieval_grid(folder / "duplicates.png", rows, title=title))
    top = unusual.order[: int(cfg.get("sheet_outliers") or 0)].tolist()
    if top:
        tiles = [
            _caption_tile(found, i, f"#{r} ", f"uniq {unusual.score[i]:.3f}", channels) for r, i in enumerate(top, 1)
        ]
        title = f"the {len(top)} most unusual items (uniqueness: 1 - mean cos to the {unusual.k} nearest)"
        sheet = save_retrieval_grid(folder / "outliers.png", _rows(tiles, columns), title=title)
        written["sheet_outliers"] = str(sheet)
    return written


def _print(summary: dict[str, Any]) -> None:
    clusters, duplicates = summary["clusters"], summary["duplicates"]
    scores = "".join(f", {name.upper()} {clusters[name]:.3f}" for name in ("nmi", "ami") if name in clusters)
    noise = f", {clusters['noise']} noise" if clusters["method"] == "hdbscan" else ""
    if "k_choice" in clusters:
        noise += f", k of the highest silhouette in {len(clusters['k_choice']['silhouette'])} tried"
    leak_counts = summary.get("leaks", {}).get("counts", {})
    Console().print(
        f"{summary['items']} items of {summary['gallery']}: {clusters['k']} clusters ({clusters['method']}{noise}"
        f"{scores}); {duplicates['groups']} near-duplicate groups of {duplicates['items_in_groups']} items at cos ≥ "
        f"{duplicates['threshold']} ({duplicates['pairs']} pairs, search: {duplicates['method']}); files in "
        f"{Path(summary['files']['summary']).parent}"
        + "".join(f"; leaks from train: {n} of {summary['leaks']['checked'][s]} {s}" for s, n in leak_counts.items()),
        highlight=False,
    )
