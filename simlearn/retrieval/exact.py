"""The one exact nearest-neighbour search of simlearn under cosine similarity: the retrieval metrics, the kNN accuracy,
the plots' retrieval grid and ``simlearn-search`` all read it.

**What "exact" means here.** A query's neighbours are the gallery items sorted by their cosine similarity computed
in float64 from the given vectors, ``cos = a·b / (|a| |b|)``, most similar first; items with equal cosines come in
the order of their gallery index, the lower index first. In self-search (``exclude_self``) a query's own item is
never its neighbour. The result equals a float64 brute force sorted with ``np.lexsort((index, -cos))``, for either
backend, any chunk size and any device (tested, exact duplicates included). A zero vector has cosine 0 with
everything.

**How, at float32 speed.** Each chunk of queries is searched in float32 on unit vectors (``"torch"``: a matrix
product and a top-k, on the device of the embeddings; ``"faiss"``: faiss's exact inner-product search, on the CPU)
for k + :data:`EXTRA_CANDIDATES` candidates. A float32 score is within ``err`` = :func:`score_error_bound` of the
float64 cosine, so:

* the order of two candidates whose float32 scores differ by more than ``2 err`` is already the float64 order; only
  runs of candidates closer than that (near-ties, exact ties) reaching into the top k are re-scored in float64 from
  the caller's arrays (never a float64 copy of the gallery; in blocks of pairs, so memory stays bounded for any k)
  and sorted by (-cos, index);
* no item outside the candidates can rank in the top k when the k-th float32 score exceeds the last candidate's by
  more than ``2 err`` (then every other item's cosine is below every top-k cosine), or when every item is a
  candidate. A query for which neither holds is searched again with twice the candidates, until one does.

``"auto"`` takes faiss for galleries of :data:`FAISS_MIN_GALLERY` items or more on the CPU when it is installed,
torch otherwise (:func:`choose_backend`). A saved faiss index (:func:`simlearn.retrieval.candidates.gallery_index`:
built once, saved next to the gallery embeddings, reused while they are unchanged) can replace the float32 search: a
flat (exact) one gives the same exact result; an approximate one (e.g. HNSW32) gives its candidates re-scored and
sorted by the same rule, but may miss neighbours it did not visit (its ``exact`` says which). Any other candidate
source (a LanceDB table) plugs in the same way: :class:`simlearn.retrieval.candidates.CandidateSource`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from simlearn.errors import UserError
from simlearn.retrieval.faiss_lib import faiss_installed, import_faiss
from simlearn.retrieval.inputs import UNIT_TOLERANCE, QueryGallery, SearchData, search_data
from simlearn.retrieval.vectors import numpy_view, row_dots

if TYPE_CHECKING:  # candidates imports this module: the protocol only for type hints
    from simlearn.retrieval.candidates import CandidateSource

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "EXTRA_CANDIDATES",
    "FAISS_MIN_GALLERY",
    "NeighbourChunk",
    "Neighbours",
    "choose_backend",
    "neighbour_chunks",
    "score_error_bound",
    "top_k",
]

_AUTO_CHUNK_FLOATS = 2**24  # similarity-matrix entries per automatic chunk
BACKENDS = ("auto", "torch", "faiss")
#: backend="auto" on the CPU takes faiss (when installed) from this gallery size on. Measured on a 2-core AMD EPYC
#: (torch 2.14 / MKL, faiss-cpu 1.15 / OpenBLAS), self-search, d=64 and 512: faiss takes 0.55-0.7x the time of the
#: torch path from 5k items on (its sgemm is faster there and its k-selection cheaper), the same at 2k.
FAISS_MIN_GALLERY = 4096
#: faiss itself searches queries in blocks of 4096, so larger chunks gain nothing (only memory).
_FAISS_MAX_CHUNK = 4096
#: Gallery columns per block of the CPU top-k, and the fewest blocks per k for which it pays (see _topk).
_TOPK_BLOCK = 64
_TOPK_MIN_BLOCKS_PER_K = 4
#: float32 candidates searched beyond the k asked for: the k-th and the last candidate's scores must differ by
#: more than twice the error bound for the top k to be certain; 8 makes a second search rare (re-searched queries
#: are logged at debug level)
EXTRA_CANDIDATES = 8
#: float64 entries per block of re-scored (query, candidate) pairs: 1 MB per gathered side, which stays in the CPU
#: cache (3x faster than 32 MB blocks, measured at d=512)
_RESCORE_FLOATS = 2**17
#: on a GPU (or for CPU dtypes numpy lacks) each block costs kernel launches rather than cache misses: 128 MB
_GPU_RESCORE_FLOATS = 2**24


def score_error_bound(dim: int) -> float:
    """A proven bound on ``|s32 - c64|``, the float32 score of a query and a gallery item in the search against
    their float64 cosine (the ranking key), for ``dim``-dimensional embeddings. Every term is a worst case (no
    estimate, no summation order assumed), so the bound is conservative: for unit vectors the actual float32 error
    is typically ~sqrt(d) u, the bound d u.

    With u = 2**-24 (float32 rounding), v = 2**-53 (float64 rounding), a and b the given rows (their values are
    exact in float64), â = a / |a| and x the float32 unit row searched:

    1. ``|x - â| <= delta = UNIT_TOLERANCE + 2u + (d + 4) 2v``. A row kept as it is (all rows' float64 norms within
       ``UNIT_TOLERANCE`` of 1, the norm itself off by at most (d + 2) v) is â scaled by |a|, rounded to float32
       when given in float64 (u |a|); a normalised row is a / |a| in float64, rounded once to float32 (u).
       So |x| <= 1 + delta.
    2. ``|s32 - x·y| <= gamma_d (1 + delta)**2 + 2d 2**-150`` with gamma_d = d u / (1 - d u): a float32 dot product
       in any summation order, with or without FMA (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002,
       eq. 3.5: gamma_d times sum |x_i y_i| <= |x| |y|), plus underflow (at most 2d operations off by 2**-150 each).
       TF32 / bf16 matmuls would break it: the search turns them off (:func:`_ieee_float32`).
    3. ``|x·y - â·b̂| <= 2 delta + delta**2`` (Cauchy-Schwarz on x = â + e).
    4. ``|c64 - â·b̂| <= (3d + 8) v``: the float64 dot product and the two norms (pairwise sums, at most d
       roundings each, relative to |a| |b|), their product, the square roots and the division.
    5. ``2**-40``: room for the float64 arithmetic that compares float32 scores against the bound (relative 2v).

    The sum: 3.28e-5 for d = 512, 6.1e-6 for d = 64, 2.4e-6 for d = 2 (where the unit tolerance dominates).
    Two scores more than twice this apart are in float64 order; closer ones are re-scored.
    """
    u, v = 2.0**-24, 2.0**-53
    d = max(1, int(dim))
    gamma = d * u / (1 - d * u)
    delta = UNIT_TOLERANCE + 2 * u + (d + 4) * 2 * v
    dot32 = gamma * (1 + delta) ** 2 + 2 * d * 2.0**-150
    return dot32 + 2 * delta + delta**2 + (3 * d + 8) * v + 2.0**-40


# ---------------------------------------------------------------- backends


def choose_backend(backend: str, device: torch.device | str, gallery_size: int) -> str:
    """The search backend that ``backend=...`` means here: ``"torch"`` or ``"faiss"``.

    ``"auto"`` takes faiss when the embeddings are on the CPU, the gallery has at least :data:`FAISS_MIN_GALLERY`
    items and faiss is installed; torch otherwise (always on a GPU, where the matrix product and top-k are fast and
    the embeddings need not leave the device). ``"faiss"`` without faiss installed is a :class:`UserError`.
    """
    if backend not in BACKENDS:
        raise UserError(f"backend must be one of {list(BACKENDS)}, got {backend!r}.")
    if backend == "faiss":
        import_faiss()
        return "faiss"
    if backend == "torch" or torch.device(device).type != "cpu" or gallery_size < FAISS_MIN_GALLERY:
        return "torch"
    return "faiss" if faiss_installed() else "torch"


def _topk(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, columns)`` of the k largest entries of each row of ``sims``, largest first (exact; equal values
    in any order, as with ``topk``: the caller orders ties).

    On the CPU a full ``topk`` costs a few ns per entry, as much as the matrix product at small dims. Splitting each
    row into blocks of :data:`_TOPK_BLOCK` columns, the k largest entries lie in the k blocks with the largest
    maxima (any other block's maximum is at most the k-th largest value), so the top-k of those k blocks (plus the
    columns after the last whole block) is the row's top-k: one cheap max per block, then a top-k over k blocks.
    """
    rows, n = sims.shape
    block = _TOPK_BLOCK
    num_blocks = n // block
    if sims.device.type != "cpu" or num_blocks < _TOPK_MIN_BLOCKS_PER_K * k or sims.stride(1) != 1:
        top = sims.topk(k, dim=1)
        return top.values, top.indices
    blocks = sims.as_strided((rows, num_blocks, block), (sims.stride(0), block, 1))
    best = blocks.amax(dim=2).topk(k, dim=1, sorted=False).indices  # (rows, k) block numbers
    candidates = blocks[torch.arange(rows, device=sims.device).unsqueeze(1), best].view(rows, k * block)
    columns = (best.unsqueeze(2) * block + torch.arange(block, device=sims.device)).view(rows, k * block)
    if num_blocks * block < n:  # the columns after the last whole block are always candidates
        candidates = torch.cat([candidates, sims[:, num_blocks * block :]], dim=1)
        tail = torch.arange(num_blocks * block, n, device=sims.device)
        columns = torch.cat([columns, tail.expand(rows, -1)], dim=1)
    top = candidates.topk(k, dim=1)
    return top.values, columns.gather(1, top.indices)


class _IeeeFloat32:
    """The process-wide switch to IEEE float32 matrix products, shared by every search in progress.

    ``torch.set_float32_matmul_precision`` is one setting for the whole process, while ``simlearn-serve`` answers
    requests on several threads: a search that set it and restored the old value at its end would lower it under a
    search still running in another thread. So the first search to start sets "highest", and the last one to end
    restores what was set before; any other thread's float32 products meanwhile also run in IEEE float32, exact
    and only slower.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._before = "highest"

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._running == 0:
                self._before = torch.get_float32_matmul_precision()
                if self._before != "highest":
                    torch.set_float32_matmul_precision("highest")
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0 and self._before != "highest":
                    torch.set_float32_matmul_precision(self._before)


#: float32 matrix products in IEEE float32 (no TF32 / bf16 shortcuts) while a search runs: the error bound of
#: :func:`score_error_bound` assumes it. A no-op unless someone lowered ``torch.set_float32_matmul_precision``.
_ieee_float32 = _IeeeFloat32()


#: ``search(rows, k) -> (scores, indices)``: the float32 scores (descending) and gallery rows (int64) of the k best
#: candidates of the queries ``rows`` (int64), the query's own item left out in self-search; numpy arrays on the host.
#: The bookkeeping around the search runs in numpy: single-threaded, it does not stall on a busy machine, where
#: torch's threaded small ops on these (queries x k) arrays were measured 10-30x slower (2 cores shared)
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def _torch_search(data: SearchData) -> Search:
    q, g = data.queries, data.gallery

    def search(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        on_device = torch.from_numpy(rows).to(q.device)
        contiguous = rows[-1] - rows[0] + 1 == len(rows)
        with _ieee_float32():
            sims = (q[int(rows[0]) : int(rows[-1]) + 1] if contiguous else q[on_device]) @ g.T
        if data.self_search:
            sims[torch.arange(len(rows), device=sims.device), on_device] = float("-inf")
        values, columns = _topk(sims, k)
        return values.cpu().numpy(), columns.cpu().numpy()

    return search


def _faiss_search(data: SearchData, index: Any = None) -> Search:
    """faiss's exact inner-product search (the kernel of ``IndexFlatIP.search``, without copying the gallery into
    an index) on the unit float32 arrays on the CPU, or ``index.search`` of a given index; in self-search one extra
    candidate is asked for and the query's own item dropped (or the last one, when exact ties pushed the own item
    out of the list). ``index``: any candidate source (:class:`~simlearn.retrieval.candidates.CandidateSource`)."""
    faiss = import_faiss() if index is None else None
    xb = data.gallery.contiguous().numpy()  # C order, so that faiss does not copy the gallery for every chunk
    xq = xb if data.queries is data.gallery else data.queries.contiguous().numpy()

    def search(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        contiguous = rows[-1] - rows[0] + 1 == len(rows)
        block = xq[rows[0] : rows[-1] + 1] if contiguous else xq[rows]  # a view for a chunk's rows
        extra = int(data.self_search)
        if index is None:
            scores, found = faiss.knn(block, xb, k + extra, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            scores, found = index.search(block, k + extra)
        if data.self_search:
            own = found == rows[:, None]
            own[~own.any(axis=1), -1] = True
            scores, found = scores[~own].reshape(len(rows), k), found[~own].reshape(len(rows), k)
        return scores, found.astype(np.int64, copy=False)

    return search


# ---------------------------------------------------------------- exact order


def _cosines(data: SearchData, query_rows: np.ndarray, gallery_rows: np.ndarray) -> np.ndarray:
    """float64 cosines of the pairs (query_rows[i], gallery_rows[i]) from the caller's arrays, a·b / (|a| |b|), in
    blocks of pairs (bounded memory for any number of pairs): through numpy for arrays on the CPU, with torch on the
    device of the arrays otherwise. Equal pairs of rows give bitwise equal dot products (:func:`row_dots`), so exact
    duplicates tie exactly."""
    raw_q, raw_g = numpy_view(data.raw_queries), numpy_view(data.raw_gallery)
    out = np.empty(len(query_rows), dtype=np.float64)
    if raw_q is not None and raw_g is not None:
        query_norms, gallery_norms = data.query_norms.numpy(), data.gallery_norms.numpy()
        step = max(1, _RESCORE_FLOATS // raw_q.shape[1])
        for i in range(0, len(query_rows), step):
            qi, gi = query_rows[i : i + step], gallery_rows[i : i + step]
            # float32 x float32 products are exact in float64; equal pairs give equal dots (row_dots)
            dot = row_dots(raw_q[qi].astype(np.float64), raw_g[gi].astype(np.float64))
            out[i : i + step] = dot / np.maximum(query_norms[qi] * gallery_norms[gi], 1e-300)  # zero vector: 0
        return out
    device, g_device = data.raw_queries.device, data.raw_gallery.device
    step = max(1, _GPU_RESCORE_FLOATS // data.raw_queries.shape[1])
    for i in range(0, len(query_rows), step):
        qi = torch.from_numpy(query_rows[i : i + step]).to(device)
        gi = torch.from_numpy(gallery_rows[i : i + step]).to(g_device)
        a = data.raw_queries.index_select(0, qi).to(torch.float64)
        b = data.raw_gallery.index_select(0, gi).to(device=device, dtype=torch.float64)
        dot = row_dots(a, b)
        norms = data.query_norms.to(device)[qi] * data.gallery_norms[gi].to(device)
        out[i : i + step] = (dot / norms.clamp(min=1e-300)).cpu().numpy()
    return out


#: ``equivalent(query_rows, gallery_rows) -> keys``: a key per (query, candidate) pair such that candidates with
#: equal keys are interchangeable for the caller (the metrics see only labels): a near-tie among them needs no
#: re-scoring
Equivalence = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _ordered(
    how: SearchPass, scores: np.ndarray, found: np.ndarray, query_rows: np.ndarray, ks: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The candidates ``found`` (float32 ``scores``, descending) in the exact order, by (-cos64, index), in their
    first ``ks[i]`` places for query i, as ``how`` says; returns the first ``width`` (<= the candidates) places,
    ``(indices, cos64 or None)``; places beyond a query's own k keep further candidates, in float32 order.

    A run is a stretch of candidates whose consecutive float32 scores are within 2 ``err`` (the only ones float32
    may misorder; a candidate alone is a run of one). The order between runs is already the float64 order (their
    scores differ by more than 2 err), so only runs of two or more that reach into the first k are re-scored in
    float64 (never the whole gallery, nor every candidate) and sorted in place. ``equivalent``: runs whose members
    all have one key keep their float32 order (interchangeable for the caller). ``exact=False`` (an approximate
    index): each query's candidates are one run, all re-scored. ``similarities``: the float64 cosines of the first
    k (every one re-scored) are returned too."""
    data, err, exact, similarities, equivalent = how.data, how.err, how.exact, how.similarities, how.equivalent
    rows, count = scores.shape
    s = scores.astype(np.float64)
    ks = np.clip(ks, 1, count)
    first = np.arange(count) < ks[:, None]  # (B, K): among the query's first k
    run = np.zeros((rows, count), dtype=np.int64)
    if exact:
        close = (s[:, :-1] - s[:, 1:]) <= 2 * err
        np.cumsum(~close, axis=1, out=run[:, 1:])  # run number of each place, counted along the row
        need = np.zeros((rows, count), dtype=bool)
        need[:, :-1] |= close
        need[:, 1:] |= close
        # beyond the query's k only the run of its k-th candidate matters (it decides which enter the top k)
        need &= first | (run == np.take_along_axis(run, (ks - 1)[:, None], axis=1))
    else:
        need = found >= 0  # an index may return -1 (fewer results than asked), which stay last
    if similarities:
        need |= first & (found >= 0)
    row, place = np.nonzero(need)  # in row-major order: grouped by (row, run), as runs are contiguous
    group = row * count + run[row, place]
    if exact and equivalent is not None and not similarities and len(row):
        keep = _mixed_runs(group, equivalent(query_rows[row], found[row, place]))
        row, place, group = row[keep], place[keep], group[keep]
    if len(row) == 0:
        return found[:, :width], s[:, :width] if similarities else None
    index = found[row, place]
    cos = _cosines(data, query_rows[row], index)
    # sort the re-scored entries by (row, run, -cos, index): stable sorts, least significant key first
    order = np.argsort(index, kind="stable")
    order = order[np.argsort(-cos[order], kind="stable")]
    order = order[np.argsort(group[order], kind="stable")]
    # each (row, run) group keeps its places, so the sorted entries fill the places in their original order
    top = found.copy()
    top[row, place], s[row, place] = index[order], cos[order]
    return top[:, :width], s[:, :width] if similarities else None


def _mixed_runs(group: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which entries (grouped by run, ``group`` contiguous) belong to runs whose members do not all have one key: in
    a run of one key any order gives the caller the same result, so it keeps its float32 order, unscored."""
    starts = np.r_[True, group[1:] != group[:-1]]
    run = np.cumsum(starts) - 1
    differs = keys != keys[np.flatnonzero(starts)[run]]
    mixed = np.zeros(int(run[-1]) + 1, dtype=bool)
    mixed[run[differs]] = True
    return mixed[run]


@dataclass(frozen=True)
class SearchPass:
    """How one search of a chunk's queries goes (what :func:`_search_rows` and :func:`_ordered` need besides the
    rows): ``data`` searched through ``search`` (float32 candidates); ``block_rows(K)`` bounds the queries searched
    at once for K candidates (memory); ``exact``: whether ``search`` is exhaustive (else its candidates are only
    re-ordered, and queries for which it found fewer than k items are searched with ``fallback``, exact);
    ``similarities``: return the float64 cosines too; ``equivalent``: keys of interchangeable candidates
    (:func:`_equivalence`); ``score_slack``: how much further ``search``'s scores may be from the float64 cosines
    than :func:`score_error_bound` (a candidate source's own rounding)."""

    data: SearchData
    search: Search
    block_rows: Callable[[int], int]
    exact: bool = True
    similarities: bool = False
    fallback: Search | None = None
    equivalent: Equivalence | None = None
    score_slack: float = 0.0

    @property
    def err(self) -> float:
        return score_error_bound(self.data.queries.shape[1]) + self.score_slack


def _search_rows(
    how: SearchPass, rows: np.ndarray, ks: np.ndarray, width: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``ks[i]`` nearest neighbours of each query ``rows[i]`` by the exact rule: ``(indices, cos64 or None)``,
    (len(rows), ``width``: max ks unless given); a query's places beyond its own k hold further candidates in
    float32 order. Queries whose top k the certainty test (module doc) cannot confirm are searched again with twice
    the candidates (see :class:`SearchPass` for the rest)."""
    data, search, block_rows, exact, similarities = how.data, how.search, how.block_rows, how.exact, how.similarities
    err = how.err
    total = data.num_candidates
    ks = np.clip(ks, 1, total)
    width = min(int(ks.max()) if width is None else width, total)
    out = np.empty((len(rows), width), dtype=np.int64)
    out_cos = np.empty((len(rows), width), dtype=np.float64) if similarities else None
    pending = np.arange(len(rows))
    count = min(width + EXTRA_CANDIDATES, total)
    while len(pending):
        step, again = max(1, block_rows(count)), []
        for i in range(0, len(pending), step):
            part = pending[i : i + step]
            scores, found = search(rows[part], count)
            part_ks = ks[part]
            if exact and count < total:  # certain: the k-th score beats the last candidate's by more than 2 err
                kth = scores[np.arange(len(part)), part_ks - 1].astype(np.float64)
                sure = kth - scores[:, count - 1].astype(np.float64) > 2 * err
            elif not exact:
                # an approximate source may return more candidates than asked (a re-ranking depth): all re-scored
                sure = ((found >= 0) | (np.arange(found.shape[1]) >= part_ks[:, None])).all(axis=1)
            else:
                sure = np.ones(len(part), dtype=bool)
            if not sure.all():
                again.append(part[~sure])
                part, scores, found, part_ks = part[sure], scores[sure], found[sure], part_ks[sure]
            if len(part):
                top, cos = _ordered(how, scores, found, rows[part], part_ks, width)
                out[part] = top
                if out_cos is not None:
                    out_cos[part] = cos
        pending = np.concatenate(again) if again else pending[:0]
        if len(pending) and not exact:  # the approximate index found too few: search those queries exactly
            exhaustive = SearchPass(data, how.fallback, block_rows, True, similarities)
            top, cos = _search_rows(exhaustive, rows[pending], ks[pending], width=width)
            out[pending] = top
            if out_cos is not None:
                out_cos[pending] = cos
            break
        if len(pending):
            count = min(2 * count, total)
            log.debug(
                "%d queries with near-ties at their k-th place: searched again with %d candidates", len(pending), count
            )
    return out, out_cos


# ---------------------------------------------------------------- the search


class NeighbourChunk(NamedTuple):
    """The neighbours of the queries ``start:stop``: ``indices`` (stop - start, k) gallery rows, in the exact order in
    each query's first ``needed`` places (beyond them: further candidates, in float32 order), ``similarities``
    their float64 cosines (when asked for, else None), ``data`` the searched copy of the input (on the CPU when
    faiss searched)."""

    start: int
    stop: int
    indices: torch.Tensor
    similarities: torch.Tensor | None
    data: SearchData


def neighbour_chunks(
    data: SearchData,
    needed: torch.Tensor,
    backend: str = "auto",
    chunk_size: int | None = None,
    similarities: bool = False,
    index: CandidateSource | None = None,
    interchangeable: str | None = None,
) -> Iterator[NeighbourChunk]:
    """Search the queries chunk by chunk: for each chunk ``start:stop`` whose queries need any neighbours, yield a
    :class:`NeighbourChunk` with each query's ``needed`` nearest candidates (one int per query, capped at the
    candidates per query) by the exact rule (module doc), k columns for the chunk's largest ``needed``.

    ``chunk_size`` (queries per chunk) bounds memory: chunk_size x gallery size floats (torch) or chunk_size x k
    result entries (faiss, which blocks its own search). ``None`` picks about 2**24 floats (64 MB) on a CPU, 2**28
    (1 GB) or a tenth of the free memory on a GPU (large products keep it busy), and for faiss the chunk whose k
    results hold about 2**22 entries (the metrics then build a few int64/float64 arrays of that shape), at most 4096
    queries (faiss's own block). ``index``: search through this faiss index of the gallery instead (see
    :func:`~simlearn.retrieval.candidates.gallery_index`, or any candidate source; exact when its ``exact``).

    ``interchangeable`` (for a :class:`QueryGallery`, whose metrics see only labels): ``"class"``: near-tied
    candidates of one class may stay in float32 order among themselves (they give the same labels in any order);
    ``"relevance"``: so may near-tied candidates all of the query's class or all of other classes (enough for
    recall@k, precision@1, R-precision and MAP@R, not for kNN votes). The set of classes in each query's first
    ``needed`` places is exact either way; this only saves float64 re-scoring.
    """
    if interchangeable not in (None, "class", "relevance"):
        raise ValueError(f"interchangeable must be None, 'class' or 'relevance', got {interchangeable!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise UserError(f"chunk_size must be a positive int or None (automatic), got {chunk_size!r}.")
    if index is not None:
        if index.size != len(data.gallery) or index.dim != data.gallery.shape[1]:
            raise UserError(
                f"the {index.library} index holds {index.size} vectors of dim {index.dim}, but the gallery "
                f"has {len(data.gallery)} of dim {data.gallery.shape[1]}; build the index from this gallery."
            )
        backend = "faiss"
    else:
        backend = choose_backend(backend, data.device, len(data.gallery))
    if backend == "faiss" and data.device.type != "cpu":  # faiss searches on the CPU; everything follows it there
        data = data.cpu()
    # per-chunk k on the host: one transfer instead of a device sync per chunk
    needed = needed.cpu().clamp(max=data.num_candidates).numpy()
    most = int(needed.max()) if len(needed) else 0
    exact = index is None or index.exact
    slack = 0.0 if index is None else index.score_slack
    if backend == "faiss":
        search = _faiss_search(data, index)
        fallback = None if exact else _faiss_search(data) if faiss_installed() else _torch_search(data)

        def block_rows(count: int) -> int:
            return min(_FAISS_MAX_CHUNK, _AUTO_CHUNK_FLOATS // (4 * max(1, count)))

    else:
        search, fallback = _torch_search(data), None
        torch_rows = max(1, _auto_chunk_floats(data.device) // len(data.gallery))

        def block_rows(count: int) -> int:
            return torch_rows

    if chunk_size is None:
        chunk_size = max(1, block_rows(min(most + EXTRA_CANDIDATES, data.num_candidates)))
    how = SearchPass(
        data, search, block_rows, exact, similarities, fallback, _equivalence(data, interchangeable), slack
    )
    for start in range(0, len(data.queries), chunk_size):
        stop = min(start + chunk_size, len(data.queries))
        ks = needed[start:stop]
        if int(ks.max()) > 0:
            rows = np.arange(start, stop)
            top, cos = _search_rows(how, rows, ks)
            yield NeighbourChunk(
                start,
                stop,
                torch.from_numpy(top).to(data.device),
                None if cos is None else torch.from_numpy(cos).to(data.device),
                data,
            )


def _equivalence(data: SearchData, interchangeable: str | None) -> Equivalence | None:
    if interchangeable is None:
        return None
    if not isinstance(data, QueryGallery):
        raise ValueError("interchangeable needs labels: search a QueryGallery")
    gallery_classes, query_classes = data.gallery_classes.cpu().numpy(), data.query_classes.cpu().numpy()
    if interchangeable == "class":
        return lambda rows, found: gallery_classes[found]
    return lambda rows, found: gallery_classes[found] == query_classes[rows]


def _auto_chunk_floats(device: torch.device) -> int:
    if device.type != "cuda":
        return _AUTO_CHUNK_FLOATS
    free, _ = torch.cuda.mem_get_info(device)
    return max(_AUTO_CHUNK_FLOATS, min(2**28, free // 40))  # a tenth of the free bytes, in floats


class Neighbours(NamedTuple):
    """Each query's k nearest gallery items, most similar first: ``similarities`` (num_queries, k) float64 cosines
    and ``indices`` (num_queries, k) int64 gallery rows."""

    similarities: np.ndarray
    indices: np.ndarray


def top_k(
    queries: Any,
    gallery: Any | None,
    k: int,
    exclude_self: bool = False,
    chunk_size: int | None = None,
    backend: str = "auto",
    index: CandidateSource | None = None,
) -> Neighbours:
    """Each query's k nearest gallery items by cosine, by the exact rule of this module (float64 cosines, ties to
    the lower gallery index): ``(similarities, indices)`` as numpy arrays, (num_queries, k), most similar first.

    ``exclude_self``: the queries are searched against themselves (pass the same array as ``gallery``, or None) and
    item i is never query i's neighbour. k is capped at the candidates per query. ``backend``, ``chunk_size``: as for
    :func:`neighbour_chunks`; queries on a GPU are searched there. ``index``: a faiss index of ``gallery`` from
    :func:`~simlearn.retrieval.candidates.gallery_index` (or any candidate source) to search through (an
    approximate one makes the result approximate). ``gallery`` may be a
    :class:`PreparedGallery` (:func:`prepare_gallery`): searched without checking and normalising it again.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise UserError(f"k must be an integer ≥ 1, got {k!r}.")
    if gallery is None:  # the queries are the gallery
        gallery = queries
    if exclude_self and len(gallery) != len(queries):
        raise UserError(
            f"exclude_self=True searches the queries against themselves, but the gallery has {len(gallery)} rows "
            f"and the queries {len(queries)}; pass the same array twice, or exclude_self=False."
        )
    data = search_data(queries, None if exclude_self else gallery)
    k = min(int(k), data.num_candidates)
    if k < 1:
        return Neighbours(np.zeros((len(data.queries), 0)), np.zeros((len(data.queries), 0), dtype=np.int64))
    needed = torch.full((len(data.queries),), k)
    cos_parts, index_parts = [], []
    for chunk in neighbour_chunks(data, needed, backend, chunk_size, similarities=True, index=index):
        cos_parts.append(chunk.similarities.cpu().numpy())
        index_parts.append(chunk.indices.cpu().numpy())
    return Neighbours(np.concatenate(cos_parts), np.concatenate(index_parts))
