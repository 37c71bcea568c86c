"""Exact nearest neighbours of queries in a gallery under cosine similarity, searched chunk by chunk of queries.

Two backends give the same neighbours (up to the order of exactly tied similarities): ``"torch"`` (a matrix product
and a top-k per chunk, on the device of the embeddings) and ``"faiss"`` (faiss's exact inner-product search,
``pip install faiss-cpu``, on the CPU). ``"auto"`` takes faiss for galleries of :data:`FAISS_MIN_GALLERY` items or
more on the CPU when it is installed, torch otherwise (see :func:`choose_backend`). The retrieval metrics and the
kNN accuracy (:mod:`simlearn.evaluation.retrieval`) both read one search.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from simlearn.errors import UserError

__all__ = [
    "BACKENDS",
    "FAISS_MIN_GALLERY",
    "QueryGallery",
    "choose_backend",
    "neighbour_chunks",
    "query_gallery",
    "top_k",
    "unit_rows",
]

_AUTO_CHUNK_FLOATS = 2**24  # similarity-matrix entries per automatic chunk
BACKENDS = ("auto", "torch", "faiss")
#: backend="auto" on the CPU takes faiss (when installed) from this gallery size on. Measured on a 2-core AMD EPYC
#: (torch 2.14 / MKL, faiss-cpu 1.15 / OpenBLAS), self-search, d=64 and 512: faiss takes 0.55-0.7x the time of the
#: torch path from 5k items on (its sgemm is faster there and its k-selection cheaper), the same at 2k.
FAISS_MIN_GALLERY = 4096
#: faiss itself searches queries in blocks of 4096, so larger chunks gain nothing (only memory).
_FAISS_MAX_CHUNK = 4096
#: Gallery columns per block of the CPU top-k, and the fewest blocks per k for which it pays (see _topk_indices).
_TOPK_BLOCK = 64
_TOPK_MIN_BLOCKS_PER_K = 4
#: rows whose norms are all within this of 1 are used as they are: normalised float32 rows deviate by at most
#: 3e-7 (measured up to d=2048), so skipping the copy changes cosines by no more than float32 rounding does
_UNIT_TOLERANCE = 1e-6
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _as_embeddings(x, name: str, device: torch.device) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise UserError(
            f"{name} must be a 2-D array of shape (num_items, dim), got shape {tuple(t.shape)}; "
            "reshape it (e.g. x.reshape(len(x), -1))."
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise UserError(f"{name} is empty (shape {tuple(t.shape)}); pass at least one item with dim >= 1.")
    if t.is_complex() or not (t.is_floating_point() or t.dtype in _INT_DTYPES):
        raise UserError(f"{name} must hold real numbers, got dtype {t.dtype}; convert it to float32.")
    t = t.to(device=device, dtype=torch.float32)
    norms = torch.linalg.vector_norm(t, dim=1)
    if not torch.isfinite(norms).all():  # a non-finite entry, or finite ones whose squares overflow float32
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        if bad:
            raise UserError(
                f"{name} contains NaN or inf (or, as float64, values beyond float32's ±3.4e38) in {bad} row(s); "
                "all values must be finite. Check the model/training for divergence or drop those items."
            )
        t = t / t.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
        norms = torch.linalg.vector_norm(t, dim=1)
    if float((norms - 1).abs().max()) <= _UNIT_TOLERANCE:
        return t  # already unit length, as trained embeddings are: no normalised copy (2 GB at 1M x 512)
    return t / norms.clamp(min=1e-12).unsqueeze(1)


def _as_labels(y, name: str, n: int, emb_name: str, device: torch.device) -> torch.Tensor:
    t = y.detach() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if t.ndim != 1:
        raise UserError(f"{name} must be a 1-D array of integer class ids, got shape {tuple(t.shape)}.")
    if t.dtype not in _INT_DTYPES:
        raise UserError(
            f"{name} must hold integer class ids, got dtype {t.dtype}; map classes to ints (e.g. .astype(int))."
        )
    if len(t) != n:
        raise UserError(
            f"{name} has {len(t)} entries but {emb_name} has {n} rows; give exactly one label per embedding."
        )
    return t.to(device=device, dtype=torch.int64)


@dataclass
class QueryGallery:
    """L2-normalised float32 queries and gallery on one device, their labels as class ids ``0 .. num_classes - 1``
    shared by both (sorted like the labels, so the smallest label has id 0), and whether the queries are searched
    against themselves (leave-one-out: a query's own item is never its neighbour). Embeddings that already had
    unit length share memory with the caller's array: read them, never modify them in place."""

    queries: torch.Tensor
    gallery: torch.Tensor
    query_classes: torch.Tensor
    gallery_classes: torch.Tensor
    labels: torch.Tensor  # the original label of each class id
    self_search: bool
    #: R_q of each query: the gallery items of its class, not counting its own item in self-search
    relevant: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        counts = torch.bincount(self.gallery_classes, minlength=len(self.labels))
        self.relevant = counts[self.query_classes] - int(self.self_search)

    @property
    def num_candidates(self) -> int:
        """Gallery items each query is ranked against."""
        return len(self.gallery) - int(self.self_search)

    @property
    def device(self) -> torch.device:
        return self.queries.device

    def cpu(self) -> QueryGallery:
        queries, query_classes = self.queries.cpu(), self.query_classes.cpu()
        if self.self_search:
            gallery, gallery_classes = queries, query_classes
        else:
            gallery, gallery_classes = self.gallery.cpu(), self.gallery_classes.cpu()
        return QueryGallery(queries, gallery, query_classes, gallery_classes, self.labels.cpu(), self.self_search)


def query_gallery(embeddings, labels, gallery_embeddings=None, gallery_labels=None) -> QueryGallery:
    """Check and normalise queries and an optional gallery (both gallery arguments or neither: self-search).

    Computation runs on the device of ``embeddings`` if it is a tensor, else on the CPU. Every problem with the
    inputs is a :class:`UserError` that names the argument and how to fix it.
    """
    device = embeddings.device if isinstance(embeddings, torch.Tensor) else torch.device("cpu")
    q = _as_embeddings(embeddings, "embeddings", device)
    q_lab = _as_labels(labels, "labels", len(q), "embeddings", device)
    self_search = gallery_embeddings is None and gallery_labels is None
    if self_search:
        g, g_lab = q, q_lab
    elif gallery_embeddings is None or gallery_labels is None:
        missing = "gallery_embeddings" if gallery_embeddings is None else "gallery_labels"
        raise UserError(
            f"{missing} is missing: pass gallery_embeddings and gallery_labels together, "
            "or neither to search the queries against themselves."
        )
    else:
        g = _as_embeddings(gallery_embeddings, "gallery_embeddings", device)
        g_lab = _as_labels(gallery_labels, "gallery_labels", len(g), "gallery_embeddings", device)
        if g.shape[1] != q.shape[1]:
            raise UserError(
                f"gallery_embeddings have dim {g.shape[1]} but embeddings have dim {q.shape[1]}; "
                "queries and gallery must come from the same model."
            )
    classes, inverse = torch.unique(torch.cat([q_lab, g_lab]), return_inverse=True)
    return QueryGallery(q, g, inverse[: len(q)], inverse[len(q) :], classes, self_search)


def _faiss_installed() -> bool:
    return importlib.util.find_spec("faiss") is not None


def _import_faiss():
    try:
        import faiss
    except ImportError as error:
        raise UserError(
            f"backend='faiss' needs the faiss package, which cannot be imported ({error}); install it with "
            "`pip install faiss-cpu` (or `pip install simlearn[faiss]`), or use backend='torch' or 'auto'."
        ) from error
    return faiss


def choose_backend(backend: str, device: torch.device | str, gallery_size: int) -> str:
    """The search backend that ``backend=...`` means here: ``"torch"`` or ``"faiss"``.

    ``"auto"`` takes faiss when the embeddings are on the CPU, the gallery has at least :data:`FAISS_MIN_GALLERY`
    items and faiss is installed; torch otherwise (always on a GPU, where the matrix product and top-k are fast and
    the embeddings need not leave the device). ``"faiss"`` without faiss installed is a :class:`UserError`.
    """
    if backend not in BACKENDS:
        raise UserError(f"backend must be one of {list(BACKENDS)}, got {backend!r}.")
    if backend == "faiss":
        _import_faiss()
        return "faiss"
    if backend == "torch" or torch.device(device).type != "cpu" or gallery_size < FAISS_MIN_GALLERY:
        return "torch"
    return "faiss" if _faiss_installed() else "torch"


def _topk_indices(sims: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of the k largest entries of each row of ``sims``, most similar first (exact; equal values in
    any order, as with ``topk``).

    On the CPU a full ``topk`` costs a few ns per entry, as much as the matrix product at small dims. Splitting each
    row into blocks of :data:`_TOPK_BLOCK` columns, the k largest entries lie in the k blocks with the largest
    maxima (any other block's maximum is at most the k-th largest value), so the top-k of those k blocks (plus the
    columns after the last whole block) is the row's top-k: one cheap max per block, then a top-k over k blocks.
    """
    rows, n = sims.shape
    block = _TOPK_BLOCK
    num_blocks = n // block
    if sims.device.type != "cpu" or num_blocks < _TOPK_MIN_BLOCKS_PER_K * k or sims.stride(1) != 1:
        return sims.topk(k, dim=1).indices
    blocks = sims.as_strided((rows, num_blocks, block), (sims.stride(0), block, 1))
    best = blocks.amax(dim=2).topk(k, dim=1, sorted=False).indices  # (rows, k) block numbers
    candidates = blocks[torch.arange(rows, device=sims.device).unsqueeze(1), best].view(rows, k * block)
    columns = (best.unsqueeze(2) * block + torch.arange(block, device=sims.device)).view(rows, k * block)
    if num_blocks * block < n:  # the columns after the last whole block are always candidates
        candidates = torch.cat([candidates, sims[:, num_blocks * block :]], dim=1)
        tail = torch.arange(num_blocks * block, n, device=sims.device)
        columns = torch.cat([columns, tail.expand(rows, -1)], dim=1)
    return columns.gather(1, candidates.topk(k, dim=1).indices)


def _torch_search(q: torch.Tensor, g: torch.Tensor, self_search: bool) -> Callable[[int, int, int], torch.Tensor]:
    def search(start: int, stop: int, k: int) -> torch.Tensor:
        sims = q[start:stop] @ g.T
        if self_search:
            rows = torch.arange(stop - start, device=sims.device)
            sims[rows, rows + start] = float("-inf")
        return _topk_indices(sims, k)

    return search


def _faiss_search(q: torch.Tensor, g: torch.Tensor, self_search: bool) -> Callable[[int, int, int], torch.Tensor]:
    """faiss's exact inner-product search (the kernel of ``IndexFlatIP.search``, without copying the gallery into
    an index) on the normalised float32 arrays; in self-search one extra neighbour is asked for and the query's own
    item dropped (or the last one, when exact ties pushed the own item out of the list)."""
    faiss = _import_faiss()
    xb = g.contiguous().numpy()  # C order, so that faiss does not copy the gallery for every chunk
    xq = xb if q is g else q.contiguous().numpy()

    def search(start: int, stop: int, k: int) -> torch.Tensor:
        _, found = faiss.knn(xq[start:stop], xb, k + int(self_search), metric=faiss.METRIC_INNER_PRODUCT)
        idx = torch.from_numpy(found)
        if self_search:
            own = idx == torch.arange(start, stop).unsqueeze(1)
            own[~own.any(dim=1), -1] = True
            idx = idx[~own].view(stop - start, k)
        return idx

    return search


def neighbour_chunks(
    data: QueryGallery, needed: torch.Tensor, backend: str = "auto", chunk_size: int | None = None
) -> Iterator[tuple[int, int, torch.Tensor, QueryGallery]]:
    """Search the queries chunk by chunk: for each chunk ``start:stop`` whose queries need any neighbours, yield
    ``(start, stop, indices, data)`` with ``indices`` the (stop - start, k) gallery rows of each query's k most
    similar candidates, most similar first, k the chunk's largest ``needed`` (one int per query, capped at the
    candidates per query). ``data`` is the searched copy of the input (on the CPU when faiss searches).

    ``chunk_size`` (queries per chunk) bounds memory: chunk_size x gallery size floats (torch) or chunk_size x k
    result entries (faiss, which blocks its own search). ``None`` picks about 2**24 floats (64 MB) on a CPU, 2**28
    (1 GB) or a tenth of the free memory on a GPU (large products keep it busy), and for faiss the chunk whose k
    results hold about 2**22 entries (the metrics then build a few int64/float64 arrays of that shape), at most 4096
    queries (faiss's own block).
    """
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise UserError(f"chunk_size must be a positive int or None (automatic), got {chunk_size!r}.")
    backend = choose_backend(backend, data.device, len(data.gallery))
    if backend == "faiss" and data.device.type != "cpu":  # faiss searches on the CPU; everything follows it there
        data = data.cpu()
    # per-chunk k on the host: one transfer instead of a device sync per chunk
    needed = needed.cpu().clamp(max=data.num_candidates)
    search = (_faiss_search if backend == "faiss" else _torch_search)(data.queries, data.gallery, data.self_search)
    if chunk_size is None:
        if backend == "faiss":
            chunk_size = max(1, min(_FAISS_MAX_CHUNK, _AUTO_CHUNK_FLOATS // (4 * max(1, int(needed.max())))))
        else:
            chunk_size = max(1, _auto_chunk_floats(data.device) // len(data.gallery))
    for start in range(0, len(data.queries), chunk_size):
        stop = min(start + chunk_size, len(data.queries))
        k = int(needed[start:stop].max())
        if k > 0:
            yield start, stop, search(start, stop, k), data


def _auto_chunk_floats(device: torch.device) -> int:
    if device.type != "cuda":
        return _AUTO_CHUNK_FLOATS
    free, _ = torch.cuda.mem_get_info(device)
    return max(_AUTO_CHUNK_FLOATS, min(2**28, free // 40))  # a tenth of the free bytes, in floats


def unit_rows(x: np.ndarray) -> np.ndarray:
    """The rows of ``x`` scaled to unit length, as float32 (an all-zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def top_k(
    queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool = False, chunk_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k on the CPU: ``(cos, index)``, both (num_queries, k), most similar first, in chunks of
    queries (never a full query × gallery matrix). ``exclude_self`` drops item i from query i's candidates (the
    queries searched against themselves); k is capped at the candidates per query."""
    if exclude_self and len(gallery) != len(queries):
        raise UserError(
            f"exclude_self=True searches the queries against themselves, but the gallery has {len(gallery)} rows "
            f"and the queries {len(queries)}; pass the same array twice, or exclude_self=False."
        )
    q = torch.from_numpy(unit_rows(queries))
    g = q if exclude_self else torch.from_numpy(unit_rows(gallery))
    k = min(k, len(g) - int(exclude_self))
    cos_parts, index_parts = [], []
    for start in range(0, len(q), chunk_size):
        sims = q[start : start + chunk_size] @ g.T
        if exclude_self:
            rows = torch.arange(len(sims))
            sims[rows, rows + start] = float("-inf")
        indices = _topk_indices(sims, k)
        cos_parts.append(sims.gather(1, indices).numpy())
        index_parts.append(indices.numpy())
    if not cos_parts:
        return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
    return np.concatenate(cos_parts), np.concatenate(index_parts)
