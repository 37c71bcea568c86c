"""Compact binary codes and their exact Hamming search.

A code is the sign pattern of an embedding: bit j is 1 where coordinate j is > 0, packed with ``np.packbits``
(``bits / 8`` uint8 bytes per item, most significant bit first: :func:`pack_codes`). The Hamming distance of two
codes is the popcount of their XOR.

**The tie rule.** Codes tie far more often than floats (a 32-bit code has 33 distances). A query's neighbours are
the gallery items sorted by Hamming distance, equal distances by gallery index, the lower first: the rule of the
exact float search (:mod:`simlearn.retrieval.exact`). It is the float rule itself on the ±1 sign vectors
(:func:`unpack_signs`): their cosine is ``1 - 2 h / bits``, decreasing in the Hamming distance h, so the float search
of the signs and the Hamming search give the same ranking, and a code gallery goes through the same
``search_gallery`` / ``top_k`` path with a :class:`CodeIndex` as its candidate source.

Two searches ship: :func:`hamming_top_k`, simlearn's own exact one, and faiss's binary indexes through
:class:`CodeIndex` (``IndexBinaryFlat``: exhaustive; ``IndexBinaryHNSW``: approximate). :func:`hamming_top_k` runs
on faiss's ``IndexBinaryFlat`` when faiss is installed (``backend="auto"``): its counting k-selection
(``use_heap=False``, codes of up to :data:`FAISS_COUNT_MAX_BITS` bits) and its heap (longer codes) both keep, per
distance, the items met first in gallery order, so they return the tie rule's ranking (tested against a brute force
on data full of ties), about 10x faster than numpy (``scripts/bench_codes.py``, README); else (``backend="numpy"``)
numpy's popcount in chunks of queries, memory bounded by ``chunk x gallery`` small ints, the tie rule built into its
sort key. Float re-ranking
(:meth:`CodeIndex.reranking`): the ``depth`` best items by Hamming distance are the candidates that the exact float
search re-scores with the float embeddings and orders by its own rule. An exhaustive index's choice among items tied
at the k-th distance is its own (faiss's, LanceDB's): :meth:`CodeIndex.hamming` asks it for more until that block of
ties is whole and then applies the tie rule, so that every exhaustive search, re-ranking candidates included, gives
simlearn's exact top k. A LanceDB table's code column is one more such index (:mod:`simlearn.retrieval.vectordb`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from simlearn.errors import UserError
from simlearn.retrieval.faiss_lib import faiss_installed, import_faiss

__all__ = [
    "CODE_FACTORIES",
    "FAISS_COUNT_MAX_BITS",
    "HAMMING_BACKENDS",
    "CodeIndex",
    "HammingNeighbours",
    "check_bits",
    "check_code_search",
    "code_index",
    "distance_chunks",
    "encoder_code_bits",
    "faiss_binary_flat",
    "hamming_chunks",
    "hamming_distances",
    "hamming_top_k",
    "pack_codes",
    "unpack_signs",
]

#: distance entries (query x gallery) per chunk of simlearn's Hamming search: about 200 MB of int64 sort keys
_CHUNK_ENTRIES = 2**24
#: faiss's counting k-selection holds (bits + 1) x k int64 ids per query: queries per faiss call so that they fill
#: at most this many (128 MB)
_COUNT_ENTRIES = 2**24
#: the longest codes searched by faiss's counting k-selection (``use_heap=False``); longer ones by its heap. Measured
#: on the 2-core machine (README, bench_codes): counting 1.2-7x faster than the heap at 16 and 64 bits (k = 10 to
#: 1000), the heap 1.3x faster at 128 bits, k = 10
FAISS_COUNT_MAX_BITS = 64
#: the exact Hamming search's backends: faiss when installed (auto), faiss, numpy
HAMMING_BACKENDS = ("auto", "faiss", "numpy")
#: the searches a :class:`CodeIndex` can run: simlearn's own exact one, faiss's exhaustive and HNSW binary indexes
CODE_FACTORIES = ("exact", "Flat", "HNSW32")


def check_bits(bits: Any, what: str = "bits") -> int:
    """``bits`` as an int if it is a positive multiple of 8 (codes are packed in whole bytes), else a
    :class:`UserError` naming the valid values."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or bits < 8 or bits % 8:
        raise UserError(
            f"{what} must be a positive multiple of 8 (codes are packed in whole bytes), got {bits!r}; "
            "e.g. 16, 32, 64 or 128."
        )
    return int(bits)


def encoder_code_bits(encoder: Any) -> int | None:
    """The code length of an encoder whose head is a hashing head (its ``code_bits``: its embeddings are relaxed
    codes), None for an encoder of float embeddings."""
    bits = getattr(getattr(encoder, "head", None), "code_bits", None)
    return None if bits is None else int(bits)


def pack_codes(embeddings: Any) -> np.ndarray:
    """The packed binary codes of ``embeddings`` (n, bits): bit j = coordinate j > 0, ``np.packbits`` along each row,
    (n, bits / 8) uint8. The dimension must be a multiple of 8."""
    x = embeddings.detach().cpu().numpy() if isinstance(embeddings, torch.Tensor) else np.asarray(embeddings)
    if x.ndim != 2:
        raise UserError(f"codes are packed from a 2-D array (num_items, bits), got shape {x.shape}.")
    check_bits(x.shape[1], "the embedding dimension of codes")
    return np.packbits(x > 0, axis=1)


def _check_codes(codes: Any, name: str) -> np.ndarray:
    array = np.asarray(codes)
    if array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] == 0:
        raise UserError(
            f"{name} must be packed binary codes: a 2-D uint8 array (num_items, bits / 8), got "
            f"{array.dtype} of shape {array.shape}; pack ±1 or real embeddings with simlearn.retrieval.codes."
            "pack_codes."
        )
    return np.ascontiguousarray(array)


def unpack_signs(codes: Any) -> np.ndarray:
    """The ±1 float32 sign vectors (n, bits) of packed codes: their cosine is ``1 - 2 h / bits`` (h the Hamming
    distance), so the exact float search ranks them as the Hamming search does."""
    bits01 = np.unpackbits(_check_codes(codes, "codes"), axis=1)
    return bits01.astype(np.float32) * 2 - 1


def _words(codes: np.ndarray) -> np.ndarray:
    """The codes as 64-bit words (n, ceil(bytes / 8)), zero-padded (padding bits are equal in every code, so
    distances do not change)."""
    pad = (-codes.shape[1]) % 8
    if pad:
        codes = np.concatenate([codes, np.zeros((len(codes), pad), dtype=np.uint8)], axis=1)
    return np.ascontiguousarray(codes).view(np.uint64)


def hamming_distances(query_codes: Any, gallery_codes: Any) -> np.ndarray:
    """The (num_queries, num_gallery) Hamming distances (int32) between packed codes: the whole matrix, for small
    inputs and tests; :func:`hamming_top_k` searches in bounded memory."""
    q, g = _check_codes(query_codes, "query codes"), _check_codes(gallery_codes, "gallery codes")
    if q.shape[1] != g.shape[1]:
        raise UserError(f"query codes have {q.shape[1] * 8} bits but gallery codes {g.shape[1] * 8}.")
    return _distances(_words(q), _words(g).T.copy()).astype(np.int32)


def _distances(query_words: np.ndarray, gallery_columns: np.ndarray) -> np.ndarray:
    """Hamming distances (uint16) of query words (c, w) to gallery words stored column by column (w, n): one
    XOR and popcount pass per word, contiguous along the gallery."""
    out = np.zeros((len(query_words), gallery_columns.shape[1]), dtype=np.uint16)
    for w in range(gallery_columns.shape[0]):
        out += np.bitwise_count(query_words[:, w, None] ^ gallery_columns[w][None, :])
    return out


def _check_pair(q: np.ndarray, g: np.ndarray, exclude_self: bool) -> None:
    if q.shape[1] != g.shape[1]:
        raise UserError(
            f"query codes have {q.shape[1] * 8} bits but gallery codes {g.shape[1] * 8}; "
            "search codes of one model, of one bit count."
        )
    if exclude_self and len(q) != len(g):
        raise UserError("exclude_self=True searches the codes against themselves: pass the same array twice.")


class HammingNeighbours(NamedTuple):
    """Each query's k nearest gallery items by Hamming distance, ties to the lower gallery index:
    ``distances`` (num_queries, k) int32 and ``indices`` (num_queries, k) int64."""

    distances: np.ndarray
    indices: np.ndarray


def distance_chunks(
    query_codes: Any, gallery_codes: Any | None, exclude_self: bool = False, chunk_size: int | None = None
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(start, stop, distances)``: the int64 Hamming distances (stop - start, gallery) of chunks of queries,
    ``chunk_size`` queries each (``None``: about 2**24 entries per chunk). ``exclude_self``: the queries are the
    gallery (``gallery_codes`` None or the same) and each query's own item is at distance ``bits + 1``, farther than
    any code."""
    q = _check_codes(query_codes, "query codes")
    g = q if gallery_codes is None else _check_codes(gallery_codes, "gallery codes")
    _check_pair(q, g, exclude_self)
    query_words, gallery_columns = _words(q), _words(g).T.copy()
    chunk = chunk_size or max(1, _CHUNK_ENTRIES // len(g))
    for start in range(0, len(q), chunk):
        stop = min(start + chunk, len(q))
        dist = torch.from_numpy(_distances(query_words[start:stop], gallery_columns).astype(np.int64))
        if exclude_self:
            own = torch.arange(start, stop)
            dist[own - start, own] = q.shape[1] * 8 + 1
        yield start, stop, dist


def faiss_binary_flat(codes: np.ndarray) -> Any:
    """A faiss ``IndexBinaryFlat`` of packed codes (uint8, (n, bits / 8)) that selects the k nearest by counting
    (``use_heap=False``) for codes of up to :data:`FAISS_COUNT_MAX_BITS` bits, else by its heap: both exact, ties to
    the lower gallery index (module doc)."""
    faiss = import_faiss()
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.use_heap = codes.shape[1] * 8 > FAISS_COUNT_MAX_BITS
    index.add(codes)
    return index


def _hamming_backend(backend: Any) -> str:
    if backend not in HAMMING_BACKENDS:
        raise UserError(f"the Hamming search backend must be one of {list(HAMMING_BACKENDS)}, got {backend!r}.")
    if backend == "faiss":
        import_faiss()
    if backend == "auto":
        return "faiss" if faiss_installed() else "numpy"
    return str(backend)


def _faiss_chunks(
    q: np.ndarray, g: np.ndarray, k: int, exclude_self: bool, chunk_size: int | None
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """:func:`hamming_chunks` by faiss (:func:`faiss_binary_flat`). ``exclude_self``: each query's k + 1 nearest
    without its own item (if its own item is not among them, its k nearest are the first k)."""
    index = faiss_binary_flat(g)
    width = k + int(exclude_self)
    chunk = chunk_size or max(1, _COUNT_ENTRIES // ((g.shape[1] * 8 + 1) * width))
    for start in range(0, len(q), chunk):
        stop = min(start + chunk, len(q))
        distances, indices = index.search(q[start:stop], width)
        if exclude_self:
            keep = indices != np.arange(start, stop)[:, None]
            keep[keep.all(axis=1), -1] = False  # own item not found: drop the last instead
            distances = distances[keep].reshape(stop - start, k)
            indices = indices[keep].reshape(stop - start, k)
        yield start, stop, distances.astype(np.int32, copy=False), indices.astype(np.int64, copy=False)


def hamming_chunks(
    query_codes: Any,
    gallery_codes: Any | None,
    k: int,
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield ``(start, stop, distances, indices)`` for chunks of queries: their k nearest gallery items by Hamming
    distance under the tie rule (module doc), int32 and int64 (stop - start, k). ``backend``: ``"auto"`` (faiss
    when installed), ``"faiss"`` (``IndexBinaryFlat``: :func:`faiss_binary_flat`; ``chunk_size`` queries per call,
    by default as many as fit 128 MB of its counters) or ``"numpy"`` (popcount; memory ``chunk_size x gallery``
    int64 distances and sort keys: :func:`distance_chunks`). ``exclude_self``: item i is never query i's neighbour;
    k is capped at the candidates per query."""
    backend = _hamming_backend(backend)
    n = len(query_codes) if gallery_codes is None else len(gallery_codes)
    k = min(int(k), n - int(exclude_self))
    if k < 1:
        return
    if backend == "faiss":
        q = _check_codes(query_codes, "query codes")
        g = q if gallery_codes is None else _check_codes(gallery_codes, "gallery codes")
        _check_pair(q, g, exclude_self)
        yield from _faiss_chunks(q, g, k, exclude_self, chunk_size)
        return
    columns = torch.arange(n, dtype=torch.int64)
    for start, stop, dist in distance_chunks(query_codes, gallery_codes, exclude_self, chunk_size):
        # one unique key per item, (distance, index): the k smallest keys are the tie rule's top k, in order
        key = dist.mul_(n).add_(columns)
        top = key.topk(k, dim=1, largest=False, sorted=True).values
        yield start, stop, (top // n).to(torch.int32).numpy(), (top % n).numpy()


def hamming_top_k(
    query_codes: Any,
    gallery_codes: Any | None,
    k: int,
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> HammingNeighbours:
    """Each query's k nearest gallery codes by Hamming distance, ties to the lower gallery index (simlearn's own
    exact search, in chunks, by faiss when installed: :func:`hamming_chunks`). ``gallery_codes=None`` with
    ``exclude_self``: leave-one-out."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise UserError(f"k must be an integer ≥ 1, got {k!r}.")
    found = hamming_chunks(
        query_codes, gallery_codes, k, exclude_self=exclude_self, chunk_size=chunk_size, backend=backend
    )
    parts = list(found)
    if not parts:
        return HammingNeighbours(np.zeros((len(query_codes), 0), np.int32), np.zeros((len(query_codes), 0), np.int64))
    return HammingNeighbours(np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]))


@dataclass
class CodeIndex:
    """A code gallery as a :class:`~simlearn.retrieval.candidates.CandidateSource`: the exact search's queries and
    gallery are float rows whose signs are the codes (the ±1 :func:`unpack_signs` of a code gallery, or the float
    embeddings whose codes these are); ``search`` packs the queries' signs and returns the Hamming-nearest items
    with the score ``1 - 2 h / bits`` (the sign vectors' exact cosine).

    ``factory``: ``"exact"`` (:func:`hamming_top_k`), ``"Flat"`` (faiss ``IndexBinaryFlat``, exhaustive) or
    ``"HNSW32"`` (faiss ``IndexBinaryHNSW``, approximate); ``index``: any object with faiss's binary ``search(codes,
    k) -> (distances, rows)`` (a LanceDB table's codes: :class:`simlearn.retrieval.vectordb.LanceCodes`),
    ``approximate`` when it may miss nearer items, ``method`` how it searches, for people. ``depth``: float
    re-ranking: each search returns the ``depth`` best items (at least k) as candidates, which the exact search
    re-scores with the float embeddings (then ``exact`` is False: the result is exact over those candidates only)."""

    codes: np.ndarray
    factory: str = "exact"
    depth: int | None = None
    index: Any = None
    library: str = "binary codes"
    score_slack: float = 0.0
    approximate: bool = False
    method: str = ""

    @property
    def bits(self) -> int:
        return self.codes.shape[1] * 8

    @property
    def size(self) -> int:
        return len(self.codes)

    @property
    def dim(self) -> int:
        return self.bits

    @property
    def exact(self) -> bool:
        return self.depth is None and not self.approximate

    def reranking(self, depth: int) -> CodeIndex:
        """This index searched for ``depth`` candidates per query, to be re-ranked by the float embeddings."""
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise UserError(f"the re-ranking depth must be an integer ≥ 1, got {depth!r}; e.g. rerank=100.")
        return dataclasses.replace(self, depth=int(depth))

    def hamming(self, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, rows)`` of the k Hamming-nearest gallery items of packed query codes (-1 rows where an
        approximate index found fewer)."""
        k = min(k, self.size)
        if self.index is None:
            found = hamming_top_k(query_codes, self.codes, k)
            return found.distances, found.indices
        query_codes = np.ascontiguousarray(query_codes)
        if self.approximate:
            distances, rows = self.index.search(query_codes, k)
            return _tie_order(np.asarray(distances), np.asarray(rows, dtype=np.int64), k, self.size)
        return _whole_ties(self.index.search, query_codes, k, self.size)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        count = max(k, self.depth or 0)
        distances, rows = self.hamming(pack_codes(queries), count)
        scores = (1 - 2 * distances.astype(np.float64) / self.bits).astype(np.float32)
        scores[rows < 0] = -np.inf
        return scores, rows

    def describe(self) -> str:
        how = self.method or {
            "exact": "simlearn's exact Hamming search",
            "Flat": "faiss IndexBinaryFlat (exhaustive)",
        }.get(self.factory, f"faiss IndexBinary{self.factory} (APPROXIMATE)")
        if self.depth is not None:
            return f"{self.bits}-bit codes by {how}: the {self.depth} nearest re-ranked by the float embeddings"
        return f"{self.bits}-bit codes by Hamming distance, {how}; ties to the lower gallery index"


def _tie_order(distances: np.ndarray, rows: np.ndarray, k: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k of each query's found items by the tie rule, (distance, row); rows -1 (not found) last."""
    missing = rows < 0
    key = np.where(missing, np.iinfo(np.int64).max, distances.astype(np.int64) * size + np.maximum(rows, 0))
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1).astype(np.int32), np.take_along_axis(rows, order, axis=1)


def _whole_ties(search: Any, query_codes: np.ndarray, k: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The tie rule's top k through an exhaustive ``search(codes, count)`` that returns the count nearest in an order
    of its own among equal distances: a query's items tied at its k-th distance may be cut anywhere, so each query is
    asked again with twice the count until its count-th distance is farther than its k-th (the block of ties is
    whole) or every item is returned; then (distance, row) picks."""
    out_d = np.empty((len(query_codes), k), dtype=np.int32)
    out_r = np.empty((len(query_codes), k), dtype=np.int64)
    # k alone is never known whole (its k-th distance is its last): start with twice k
    pending, count = np.arange(len(query_codes)), min(2 * k, size)
    while len(pending):
        distances, rows = search(query_codes[pending], count)
        distances, rows = np.asarray(distances), np.asarray(rows, dtype=np.int64)
        whole = np.ones(len(pending), dtype=bool)
        if count < size:
            last = np.where(rows[:, count - 1] < 0, np.iinfo(np.int64).max, distances[:, count - 1])
            whole = last > distances[:, k - 1]
        done = pending[whole]
        out_d[done], out_r[done] = _tie_order(distances[whole], rows[whole], k, size)
        pending, count = pending[~whole], min(2 * count, size)
    return out_d, out_r


def check_code_search(factory: Any, rerank: Any) -> tuple[str, int | None]:
    """The options of a code gallery's search (``code_index``: one of :data:`CODE_FACTORIES`, ``rerank``: None or
    an integer ≥ 1), checked before anything is loaded; each mistake is a :class:`UserError` naming the valid ones."""
    factory = "exact" if factory is None else factory
    if factory not in CODE_FACTORIES:
        raise UserError(f"code_index={factory!r} is not a code search; valid: {list(CODE_FACTORIES)}.")
    if rerank is not None and (isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 1):
        raise UserError(f"rerank={rerank!r} must be null or an integer ≥ 1 (Hamming candidates re-ranked by floats).")
    return str(factory), rerank


def code_index(codes: Any, factory: str = "exact") -> CodeIndex:
    """A :class:`CodeIndex` of packed gallery codes, built with ``factory`` (:data:`CODE_FACTORIES`); anything else
    is a :class:`UserError`."""
    codes = _check_codes(codes, "gallery codes")
    if factory not in CODE_FACTORIES:
        raise UserError(f"code_index={factory!r} is not a code search; valid: {list(CODE_FACTORIES)}.")
    if factory == "exact":
        return CodeIndex(codes, factory)
    if factory == "Flat":
        return CodeIndex(codes, factory, index=faiss_binary_flat(codes), library="faiss binary")
    index = import_faiss().IndexBinaryHNSW(codes.shape[1] * 8, 32)
    index.add(codes)
    return CodeIndex(codes, factory, index=index, library="faiss binary", approximate=factory == "HNSW32")
