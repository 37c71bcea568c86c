"""Near-duplicate groups: every pair of items whose cosine is at least a threshold, grouped transitively (connected
components), found through the one exact search (:func:`simlearn.retrieval.exact.top_k`, in chunks of queries:
memory N × ``max_neighbours``, never N × N) up to ``exact_limit`` items and through a faiss index beyond it (the
result says which, and whether it was exact)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from simlearn.errors import UserError
from simlearn.organise.clusters import unit_embeddings
from simlearn.retrieval.candidates import gallery_index
from simlearn.retrieval.exact import top_k
from simlearn.retrieval.faiss_lib import faiss_installed

__all__ = ["DuplicateGroups", "find_duplicates"]


@dataclass
class DuplicateGroups:
    """``pairs`` (P, 2) item pairs ``i < j`` with cosine ``pair_cosines`` ≥ ``threshold``; ``groups``: each group's
    items (two or more), largest group first, each group's items in order of the item number (its first item is the
    one to keep); ``method``: how the pairs were searched; ``exact``: whether that search was exhaustive."""

    pairs: np.ndarray
    pair_cosines: np.ndarray
    groups: list[np.ndarray]
    threshold: float
    method: str
    exact: bool

    def group_of(self, n: int) -> np.ndarray:
        """The group number of each of the ``n`` items (-1: in no group)."""
        group = np.full(n, -1, dtype=np.int64)
        for g, items in enumerate(self.groups):
            group[items] = g
        return group


def check_threshold(threshold: float, key: str = "threshold") -> float:
    """``threshold`` as a float in [-1, 1], else one line naming it as ``key``."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not -1.0 <= float(threshold) <= 1.0:
        raise UserError(
            f"{key}={threshold!r} is not a cosine: give a number from -1 to 1 (e.g. {key}=0.98; higher finds "
            f"fewer, closer copies)."
        )
    return float(threshold)


def find_duplicates(
    embeddings: np.ndarray,
    threshold: float = 0.98,
    max_neighbours: int = 32,
    exact_limit: int = 200_000,
    index_factory: str = "HNSW32",
    chunk_size: int | None = None,
) -> DuplicateGroups:
    """The near-duplicate pairs and groups of ``embeddings`` (N, d) at cosine ≥ ``threshold``.

    Each item's ``max_neighbours`` nearest others are searched (an item with more copies than that keeps its
    groups through the copies' own lists, as grouping is transitive). Up to ``exact_limit`` items the search is
    exact; beyond it through a faiss ``index_factory`` index (approximate for e.g. HNSW32: a pair may be missed,
    the re-scored cosines of what it finds are exact)."""
    threshold = check_threshold(threshold)
    x = unit_embeddings(embeddings)
    n = len(x)
    if n == 0:
        raise UserError("there are no items to look for duplicates in (the gallery is empty); give one with items.")
    k = min(int(max_neighbours), n - 1)
    index = None
    method = "exact (float64 cosines, chunked)"
    if n > exact_limit and faiss_installed():
        index = gallery_index(x, None, index_factory)
        method = f"faiss {index_factory} index ({'exact' if index.exact else 'approximate'}), candidates re-scored"
    if k < 1:
        pairs, cosines = np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    else:
        found = top_k(x, None, k, exclude_self=True, chunk_size=chunk_size, index=index)
        rows = np.repeat(np.arange(n), found.indices.shape[1])
        cols, sims = found.indices.ravel(), found.similarities.ravel()
        keep = (sims >= threshold) & (cols >= 0)
        a, b = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
        # each pair is found from both ends: one row per pair
        unique, first = np.unique(a * n + b, return_index=True)
        pairs = np.stack([unique // n, unique % n], axis=1).astype(np.int64)
        cosines = sims[keep][first]
    groups: list[np.ndarray] = []
    if len(pairs):
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        _, component = connected_components(graph, directed=False)
        counts = np.bincount(component)
        for c in np.flatnonzero(counts >= 2):
            groups.append(np.flatnonzero(component == c))
        groups.sort(key=lambda items: (-len(items), int(items[0])))
    exact = index is None or bool(index.exact)
    return DuplicateGroups(pairs, cosines, groups, threshold, method, exact)
