"""Leaks between splits: the val and test items (any split but the training one) that have a near-duplicate in the
training split, which silently inflates every metric measured on them. Each such item's nearest training item comes
from the one exact search (:func:`simlearn.retrieval.exact.top_k`, in chunks: memory per item, never all pairs)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simlearn.errors import UserError
from simlearn.organise.clusters import unit_embeddings
from simlearn.organise.duplicates import check_threshold
from simlearn.retrieval.exact import top_k

log = logging.getLogger(__name__)

__all__ = ["Leak", "Leaks", "leaks", "write_leaks"]


@dataclass(frozen=True)
class Leak:
    """An item of ``split`` (row ``item`` of the arrays, file ``path``) whose nearest training item (row
    ``train_item``, file ``train_path``) is at ``cosine`` ≥ the threshold."""

    split: str
    item: int
    path: str
    train_item: int
    train_path: str
    cosine: float


@dataclass
class Leaks:
    """The ``leaks`` found (by split, then most similar first), how many items of each split were ``checked`` and
    how many leak (``counts``), at ``threshold``."""

    leaks: list[Leak]
    checked: dict[str, int]
    threshold: float
    counts: dict[str, int] = field(default_factory=dict)


def leaks(
    embeddings: np.ndarray,
    paths: Sequence[str],
    splits: Sequence[str],
    threshold: float = 0.999,
    train_split: str = "train",
    chunk_size: int | None = None,
) -> Leaks:
    """The items of every split but ``train_split`` whose nearest ``train_split`` item is at cosine ≥ ``threshold``.

    ``embeddings`` (N, d), ``paths`` and ``splits``: one entry per item (the items of all splits together)."""
    threshold = check_threshold(threshold)
    x = unit_embeddings(embeddings)
    splits = np.asarray([str(s) for s in splits])
    if len(paths) != len(x) or len(splits) != len(x):
        raise ValueError(f"{len(x)} embeddings, {len(paths)} paths and {len(splits)} splits: give one of each per item")
    train = np.flatnonzero(splits == train_split)
    others = [str(s) for s in dict.fromkeys(splits.tolist()) if s != train_split]
    if len(train) == 0:
        raise UserError(
            f"the data has no {train_split!r} split to compare the others with (splits: {', '.join(others) or 'none'})."
        )
    found: list[Leak] = []
    checked: dict[str, int] = {}
    counts: dict[str, int] = {}
    for split in others:
        rows = np.flatnonzero(splits == split)
        checked[split] = len(rows)
        nearest = top_k(x[rows], x[train], 1, chunk_size=chunk_size)
        cosines, columns = nearest.similarities[:, 0], nearest.indices[:, 0]
        hits = np.flatnonzero(cosines >= threshold)
        counts[split] = len(hits)
        for h in hits[np.lexsort((rows[hits], -cosines[hits]))]:
            item, train_item = int(rows[h]), int(train[columns[h]])
            found.append(Leak(split, item, str(paths[item]), train_item, str(paths[train_item]), float(cosines[h])))
    return Leaks(leaks=found, checked=checked, threshold=threshold, counts=counts)


def write_leaks(found: Leaks, path: Path) -> Path:
    """leaks.csv: one row per held-out item with a near-copy in the training split, with both files; when there
    are any, one warning with the counts per split."""
    if found.leaks:
        counts = ", ".join(f"{count} of {found.checked[split]} {split}" for split, count in found.counts.items())
        log.warning("leaks: %s items have a near-duplicate (cos >= %s) in the training split: %s", counts,
                    found.threshold, path)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["split", "item", "path", "train_item", "train_path", "cosine"])
        writer.writerows([k.split, k.item, k.path, k.train_item, k.train_path, f"{k.cosine:.6f}"] for k in found.leaks)
    return path
