"""Near-duplicate groups: every pair of items whose cosine is at least a threshold, grouped transitively (connected
components), found through the one exact search (:func:`simlearn.retrieval.exact.neighbour_chunks`, in chunks of
queries, each chunk's pairs below the threshold dropped at once: memory N × d for the embeddings plus one chunk plus
the pairs found, never N × N nor N × ``max_neighbours``) up to ``exact_limit`` items and through a faiss index
beyond it (the result says which, and whether it was exact).

``exact_limit`` = 200,000 by default: the exact search costs time quadratic in N, an HNSW32 index about linear time
but misses pairs. On a 2-core machine shared with other jobs (load average 6-15), d = 128: exact, 309 s at 100k
items (so about 20 min at 200k) and an estimated 6.8 h at 1M; HNSW32, 58 s to build and 48 s to search at 100k, 422
s and 262 s at 1M, finding 96.9 % and 94.3 % of the pairs (README "Organising a catalogue",
``scripts/bench_organise_scale.py``). Up to 200k a batch job can afford every pair."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from simlearn.errors import UserError
from simlearn.organise.clusters import unit_embeddings
from simlearn.retrieval.candidates import FaissIndex, gallery_index
from simlearn.retrieval.exact import neighbour_chunks
from simlearn.retrieval.faiss_lib import faiss_installed, faiss_reason, import_faiss
from simlearn.retrieval.inputs import search_data

__all__ = [
    "DEEPEN_LIMIT",
    "EXACT_LIMIT",
    "HNSW_PARAMS",
    "DuplicateGroups",
    "check_search_options",
    "search_parameters",
    "PairCollector",
    "find_duplicates",
    "neighbour_index",
    "self_neighbours",
]

log = logging.getLogger(__name__)

#: the most near-copies of an item whose pairs are all found when its max_neighbours nearest are all pairs (one more
#: search, for this many + 1 neighbours); a larger group (blank placeholders) lists its items' nearest this many + 1,
#: and stays whole. Unbounded, half of 10,000 items being one blank image took 171 s and 5.6 GiB (12.5M pairs)
DEEPEN_LIMIT = 256

#: up to this many items the pairs are searched exactly, beyond it through a faiss index (module doc: the figures)
EXACT_LIMIT = 200_000


@dataclass
class DuplicateGroups:
    """``pairs`` (P, 2) item pairs ``i < j`` with cosine ``pair_cosines`` ≥ ``threshold``; ``groups``: each group's
    items (two or more), largest group first, each group's items in order of the item number (its first item is the
    one to keep); ``method``: how the pairs were searched; ``exact``: whether that search was exhaustive;
    ``deepened``: the items whose ``max_neighbours`` nearest others were all pairs, searched again deeper so that
    none of their pairs is left out (:meth:`PairCollector.complete`); ``capped``: those with more than
    :data:`DEEPEN_LIMIT` near-copies, whose nearest ``DEEPEN_LIMIT`` pairs are listed (their groups are whole)."""

    pairs: np.ndarray
    pair_cosines: np.ndarray
    groups: list[np.ndarray]
    threshold: float
    method: str
    exact: bool
    deepened: int = 0
    capped: int = 0

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


#: the search parameters of an HNSW index when ``faiss_params`` is null: efSearch=64 (faiss's default 16 finds fewer
#: pairs: 96.9 % against 100 % of the planted pairs at 100k items in the same time, README "At scale"); any other
#: index keeps faiss's own defaults
HNSW_PARAMS = "efSearch=64"


def check_search_options(cfg: Mapping[str, Any]) -> None:
    """The duplicate search's options (``max_neighbours``, ``exact_limit``, ``faiss_index``, ``faiss_params``)
    checked before anything loads: one line each (the service names them organise.KEY in its own messages)."""
    for key, least in (("max_neighbours", 1), ("exact_limit", 0)):
        value = cfg.get(key, 32 if key == "max_neighbours" else EXACT_LIMIT)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UserError(
                f"{key}={value!r} must be a whole number ≥ {least}; e.g. {key}="
                f"{32 if key == 'max_neighbours' else EXACT_LIMIT}."
            )
    factory = cfg.get("faiss_index", "HNSW32")
    if not isinstance(factory, str) or not factory.strip():
        raise UserError(
            f"faiss_index={factory!r} is not a faiss index_factory string; e.g. faiss_index=HNSW32 "
            f"(approximate) or faiss_index=Flat (exact), \"faiss_index='IVF64,Flat'\" with a comma."
        )
    search_parameters(cfg.get("faiss_params"), factory)


def search_parameters(params: Any, factory: str) -> str | None:
    """``faiss_params`` as the string ``faiss.ParameterSpace`` reads (``"efSearch=128,nprobe=4"``): given as that
    string or as a mapping (``{efSearch: 128}`` on the command line); null: :data:`HNSW_PARAMS` for an HNSW
    ``factory``, faiss's defaults (None) for any other. Else one line."""
    if params is None:
        return HNSW_PARAMS if "HNSW" in str(factory).upper() else None
    if isinstance(params, Mapping):
        params = ",".join(f"{name}={value}" for name, value in params.items())
    if not isinstance(params, str) or not re.fullmatch(r"\s*\w+=[^,=\s]+(\s*,\s*\w+=[^,=\s]+)*\s*", params):
        raise UserError(
            f"faiss_params={params!r} is not faiss search parameters; give name=value pairs, e.g. "
            f"faiss_params={{efSearch:128}} or \"faiss_params='efSearch=128,nprobe=4'\", or "
            f"faiss_params=null (efSearch=64 for HNSW, faiss's defaults otherwise)."
        )
    return params.replace(" ", "")


def neighbour_index(
    embeddings: np.ndarray, exact_limit: int = EXACT_LIMIT, index_factory: str = "HNSW32", params: Any = None
) -> FaissIndex | None:
    """The faiss ``index_factory`` index the neighbour searches of a collection of more than ``exact_limit`` items
    go through (built in memory from the unit rows); None (the exact chunked search) up to it or without faiss.
    ``params``: faiss search parameters as :func:`search_parameters` takes them (``"efSearch=128"`` for HNSW: a
    deeper search finds more pairs, slower; ``"nprobe=32"`` for IVF; None: efSearch=64 for HNSW, faiss's defaults
    otherwise). Build it once and pass it to :func:`find_duplicates` and
    :func:`~simlearn.organise.outliers.uniqueness`."""
    n = len(embeddings)
    params = search_parameters(params, index_factory)
    if n <= int(exact_limit) or n < 2 or not faiss_installed():
        return None
    index = gallery_index(unit_embeddings(embeddings), None, index_factory)
    if params:
        set_search_parameters(index, params)
    return index


def set_search_parameters(index: FaissIndex, params: str) -> None:
    """Set faiss search parameters (``"efSearch=128"``, ``"nprobe=32,efSearch=64"``) on ``index``, else one line."""
    faiss = import_faiss()
    try:
        faiss.ParameterSpace().set_index_parameters(index.index, params)
    except (RuntimeError, ValueError) as error:
        raise UserError(
            f"faiss_params={params!r} does not fit the faiss {index.factory} index ({faiss_reason(error)}); give "
            f"name=value pairs it has, e.g. faiss_params={{efSearch:128}} for HNSW or faiss_params={{nprobe:32}} "
            f"for IVF, or faiss_params=null (efSearch=64 for HNSW, faiss's defaults otherwise)."
        ) from None


def self_neighbours(
    x: np.ndarray, k: int, index: FaissIndex | None = None, chunk_size: int | None = None
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Each item's ``k`` nearest other items (k < len(x)) of the unit rows ``x``, chunk by chunk: ``(start,
    cosines, indices)`` for the items ``start:start + len(cosines)``, (rows, k) float64 / int64 (-1: an approximate
    ``index`` found fewer), by the exact rule of :mod:`simlearn.retrieval.exact`. Memory: one chunk at a time."""
    data = search_data(x, None)
    needed = torch.full((len(x),), int(k))
    for chunk in neighbour_chunks(data, needed, chunk_size=chunk_size, similarities=True, index=index):
        yield chunk.start, chunk.similarities.cpu().numpy(), chunk.indices.cpu().numpy()


def find_duplicates(
    embeddings: np.ndarray,
    threshold: float = 0.98,
    max_neighbours: int = 32,
    exact_limit: int = EXACT_LIMIT,
    index_factory: str = "HNSW32",
    chunk_size: int | None = None,
    index: FaissIndex | None = None,
) -> DuplicateGroups:
    """The near-duplicate pairs and groups of ``embeddings`` (N, d) at cosine ≥ ``threshold``.

    Each item's ``max_neighbours`` nearest others are searched (an item with more copies than that keeps its
    groups through the copies' own lists, as grouping is transitive). Up to ``exact_limit`` items the search is
    exact; beyond it through a faiss ``index_factory`` index (approximate for e.g. HNSW32: a pair may be missed,
    the re-scored cosines of what it finds are exact). ``index``: one :func:`neighbour_index` built already
    (then ``exact_limit`` and ``index_factory`` are not used)."""
    threshold = check_threshold(threshold)
    x = unit_embeddings(embeddings)
    n = len(x)
    if n == 0:
        raise UserError("there are no items to look for duplicates in (the gallery is empty); give one with items.")
    k = min(int(max_neighbours), n - 1)
    if index is None:
        index = neighbour_index(x, exact_limit, index_factory)
    pairs = PairCollector(n, threshold, k)
    if k >= 1:
        for start, sims, cols in self_neighbours(x, k, index, chunk_size):
            pairs.add(start, sims, cols)
        pairs.complete(x, index, chunk_size)
    return pairs.groups(index)


class PairCollector:
    """The pairs at cosine ≥ ``threshold`` among each item's ``k`` nearest others, gathered chunk by chunk from a
    neighbour search (:func:`self_neighbours`, whose lists may be longer: their first ``k`` columns are used), so
    that one search can feed it and :class:`~simlearn.organise.outliers.UniquenessScores` at once."""

    def __init__(self, n: int, threshold: float, k: int) -> None:
        self.n, self.threshold, self.k = n, float(threshold), int(k)
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []
        self._cos: list[np.ndarray] = []
        self._full: list[np.ndarray] = []  # items whose list was all pairs: searched again deeper (complete)
        self.deepened = self.capped = 0

    def add(self, start: int, sims: np.ndarray, cols: np.ndarray) -> None:
        """One chunk: the neighbours ``cols`` (rows, ≥ k; -1: none) and cosines ``sims`` of items ``start:``."""
        sims, cols = sims[:, : self.k], cols[:, : self.k]
        # only the pairs above the threshold are kept from each chunk: memory grows with the pairs, not N × k
        keep = (sims >= self.threshold) & (cols >= 0)
        if 1 <= self.k < self.n - 1:  # a list of every other item misses nothing; a shorter one that is all pairs may
            self._full.append(start + np.flatnonzero(keep[:, -1]))
        self._keep(start + np.nonzero(keep)[0], cols[keep], sims[keep])

    def _keep(self, rows: np.ndarray, cols: np.ndarray, cosines: np.ndarray) -> None:
        self._a.append(np.minimum(rows, cols))
        self._b.append(np.maximum(rows, cols))
        self._cos.append(cosines)

    def complete(self, x: np.ndarray, index: FaissIndex | None = None, chunk_size: int | None = None) -> None:
        """Search the items whose every listed neighbour was a pair once more, for ``DEEPEN_LIMIT + 1`` neighbours
        (or all the others): so the exact search finds every pair at cos ≥ ``threshold`` whatever
        ``max_neighbours`` for any item with at most :data:`DEEPEN_LIMIT` near-copies. Only those items are
        searched, in chunks (:func:`~simlearn.retrieval.exact.neighbour_chunks`); one pass, since the search's
        time grows with the neighbours asked and a doubling series would ask for nearly twice as many. An item with
        more (one of a group of hundreds of copies: blank placeholders) keeps its nearest ``DEEPEN_LIMIT + 1``
        pairs, counted in ``capped``: its group is whole all the same (it joins through them), and memory stays at
        most N × (``DEEPEN_LIMIT`` + 1) pairs where all of them would be N² / 2. Through an approximate ``index``
        the deeper lists are its own (filled exhaustively where it lists fewer), so a pair it misses stays missed,
        as in its first search."""
        full = np.unique(np.concatenate(self._full)) if self._full else np.zeros(0, dtype=np.int64)
        self._full, self.deepened, self.capped = [], len(full), 0
        k = min(self.n - 1, DEEPEN_LIMIT + 1)  # one more than the limit: an item with exactly that many is whole
        if not len(full) or k <= self.k:
            return
        data = search_data(x[full], x)  # the item itself is among its gallery's candidates: one more, then dropped
        needed = torch.full((len(full),), min(k + 1, self.n))
        for chunk in neighbour_chunks(data, needed, chunk_size=chunk_size, similarities=True, index=index):
            rows = full[chunk.start : chunk.stop]
            sims, cols = chunk.similarities.cpu().numpy(), chunk.indices.cpu().numpy()
            valid = (cols >= 0) & (cols != rows[:, None])
            keep = (sims >= self.threshold) & valid
            self._keep(rows[np.nonzero(keep)[0]], cols[keep], sims[keep])
            if k < self.n - 1:  # still all pairs: more than DEEPEN_LIMIT near-copies
                self.capped += int((keep.sum(axis=1) >= k).sum())

    def groups(self, index: FaissIndex | None = None) -> DuplicateGroups:
        """The pairs (one row each) and their groups; ``index``: the faiss index searched (None: exact)."""
        n = self.n
        method = "exact (float64 cosines, chunked)"
        if index is not None:
            method = f"faiss {index.factory} index ({'exact' if index.exact else 'approximate'}), candidates re-scored"
        if self._a:
            a, b = np.concatenate(self._a), np.concatenate(self._b)
            # each pair is found from both ends: one row per pair
            unique, first = np.unique(a * n + b, return_index=True)
            pairs = np.stack([unique // n, unique % n], axis=1).astype(np.int64)
            cosines = np.concatenate(self._cos)[first]
        else:
            pairs, cosines = np.zeros((0, 2), dtype=np.int64), np.zeros(0)
        groups: list[np.ndarray] = []
        if len(pairs):
            graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
            _, component = connected_components(graph, directed=False)
            # one sort splits the grouped items by component (a pass over all N items per group would be groups × N)
            members = np.flatnonzero(np.bincount(component)[component] >= 2)
            members = members[np.argsort(component[members], kind="stable")]
            starts = np.flatnonzero(np.r_[True, np.diff(component[members]) != 0])
            groups = np.split(members, starts[1:])
            groups.sort(key=lambda items: (-len(items), int(items[0])))
        exact = index is None or bool(index.exact)
        if self.capped:
            log.warning(
                "duplicates: %d item(s) have more than %d near-copies each (cos >= %s; a large group of copies, e.g. "
                "blank or placeholder images): their %d nearest pairs are listed, not all; their groups are whole",
                self.capped,
                DEEPEN_LIMIT,
                self.threshold,
                DEEPEN_LIMIT + 1,
            )
        return DuplicateGroups(pairs, cosines, groups, self.threshold, method, exact, self.deepened, self.capped)
