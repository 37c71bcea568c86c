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

__all__ = ["Uniqueness", "UniquenessScores", "check_uniqueness_k", "uniqueness"]


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
    k = check_uniqueness_k(k, n)
    if index is None:
        index = neighbour_index(x, exact_limit, index_factory)
    scores = UniquenessScores(n, k)
    for start, sims, cols in self_neighbours(x, k, index, chunk_size):
        scores.add(start, sims, cols)
    return scores.result(index)


def check_uniqueness_k(k: object, n: int) -> int:
    """``k`` (the neighbours each item is compared with) capped at N - 1, else one line."""
    if n < 2:
        raise UserError(f"uniqueness compares each item with the others: the gallery has {n} item(s), give 2 or more.")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise UserError(f"uniqueness_k={k!r} must be an integer ≥ 1 (the neighbours each item is compared with).")
    return min(int(k), n - 1)


class UniquenessScores:
    """Each item's uniqueness gathered chunk by chunk from a neighbour search
    (:func:`~simlearn.organise.duplicates.self_neighbours`, whose lists may be longer: their first ``k`` columns
    are used), so that one search can feed it and :class:`~simlearn.organise.duplicates.PairCollector` at once."""

    def __init__(self, n: int, k: int) -> None:
        self.k = int(k)
        self.score = np.empty(n)

    def add(self, start: int, sims: np.ndarray, cols: np.ndarray) -> None:
        """One chunk: the neighbours ``cols`` (rows, ≥ k; -1: none) and cosines ``sims`` of items ``start:``."""
        sims, cols = sims[:, : self.k], cols[:, : self.k]
        # an approximate index may find fewer than k (index -1): the mean of those it found
        found = cols >= 0
        mean = np.where(found, sims, 0.0).sum(axis=1) / np.maximum(found.sum(1), 1)
        self.score[start : start + len(sims)] = 1.0 - mean

    def result(self, index: FaissIndex | None = None) -> Uniqueness:
        """The scores, most unusual first; ``index``: the faiss index searched (None: exact)."""
        order = np.lexsort((np.arange(len(self.score)), -self.score))
        return Uniqueness(score=self.score, order=order, k=self.k, exact=index is None or bool(index.exact))
