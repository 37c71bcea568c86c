"""The odd ones out: each item's uniqueness, one minus its mean cosine to its k nearest other items (through the one
exact search, in chunks), the most unusual first."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simlearn.errors import UserError
from simlearn.organise.clusters import unit_embeddings
from simlearn.retrieval.exact import top_k

__all__ = ["Uniqueness", "uniqueness"]


@dataclass
class Uniqueness:
    """``score`` (N,): each item's uniqueness in [0, 2]; ``order``: the items, most unusual first (ties to the lower
    item); ``k``: the neighbours it was averaged over."""

    score: np.ndarray
    order: np.ndarray
    k: int


def uniqueness(embeddings: np.ndarray, k: int = 5, chunk_size: int | None = None) -> Uniqueness:
    """1 - mean cosine of each item to its ``k`` nearest other items (k capped at N - 1)."""
    x = unit_embeddings(embeddings)
    n = len(x)
    if n < 2:
        raise UserError(f"uniqueness compares each item with the others: the gallery has {n} item(s), give 2 or more.")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise UserError(f"outlier_k={k!r} must be an integer ≥ 1 (the neighbours each item is compared with).")
    found = top_k(x, None, min(int(k), n - 1), exclude_self=True, chunk_size=chunk_size)
    score = 1.0 - found.similarities.mean(axis=1)
    order = np.lexsort((np.arange(n), -score))
    return Uniqueness(score=score, order=order, k=found.indices.shape[1])
