"""The odd ones out: each item's uniqueness, one minus its mean cosine to its k nearest other items (through the one
exact search, in chunks, each chunk reduced to its items' scores at once: memory N scores beyond the embeddings; or
through the faiss index of :func:`~simlearn.organise.duplicates.neighbour_index` beyond ``exact_limit`` items), the
most unusual first."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simlearn.errors import UserError
from simlearn.organise.clusters import unit_embeddings
from simlearn.organise.duplicates import EXACT_LIMIT, neighbour_index, self_neighbours
from simlearn.retrieval.candidates import FaissIndex

__all__ = ["Uniqueness", "uniqueness"]


@dataclass
class Uniqueness:
    """``score`` (N,): each item's uniqueness in [0, 2]; ``order``: the items, most unusual first (ties to the lower
    item); ``k``: the neighbours it was averaged over; ``exact``: whether the neighbours were searched exactly."""

    score: np.ndarray
    order: np.ndarray
    k: int
    exact: bool = True


def uniqueness(
    embeddings: np.ndarray,
    k: int = 5,
    chunk_size: int | None = None,
    exact_limit: int = EXACT_LIMIT,
    index_factory: str = "HNSW32",
    index: FaissIndex | None = None,
) -> Uniqueness:
    """1 - mean cosine of each item to its ``k`` nearest other items (k capped at N - 1). Up to ``exact_limit``
    items exactly, beyond it through a faiss ``index_factory`` index (or the ``index`` given: one
    :func:`~simlearn.organise.duplicates.neighbour_index`, shared with the duplicate search); an approximate index
    may miss a near neighbour, which makes an item look more unusual than it is."""
    x = unit_embeddings(embeddings)
    n = len(x)
    if n < 2:
        raise UserError(f"uniqueness compares each item with the others: the gallery has {n} item(s), give 2 or more.")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise UserError(f"outlier_k={k!r} must be an integer ≥ 1 (the neighbours each item is compared with).")
    if index is None:
        index = neighbour_index(x, exact_limit, index_factory)
    k = min(int(k), n - 1)
    score = np.empty(n)
    for start, sims, cols in self_neighbours(x, k, index, chunk_size):
        # an approximate index may find fewer than k (index -1): the mean of those it found
        found = cols >= 0
        score[start : start + len(sims)] = 1.0 - np.where(found, sims, 0.0).sum(axis=1) / np.maximum(found.sum(1), 1)
    order = np.lexsort((np.arange(n), -score))
    return Uniqueness(score=score, order=order, k=k, exact=index is None or bool(index.exact))
