"""Exact retrieval metrics under cosine similarity, computed chunk by chunk (never an N x N matrix).

Definitions, for a query q whose class has R_q relevant items among its candidates (the gallery items with
q's label; in self-search q's own item is not a candidate, so R_q is one less than the class size):

- ``recall@k``: 1 if at least one of the k most similar candidates has q's label, else 0.
- ``precision@1``: 1 if the most similar candidate has q's label, else 0.
- ``r_precision``: (number of same-label items among the top R_q) / R_q.
- ``map@r`` (MAP@R, Musgrave et al. 2020, "A Metric Learning Reality Check"):
  AP@R_q = (1 / R_q) * sum_{i=1..R_q} P(i) * rel(i), with P(i) the precision over the top i and rel(i) = 1 if
  the item at rank i has q's label.

Every metric is the mean over the kept queries. Queries with R_q == 0 ("lone" queries: no other item of
their class is in the gallery) cannot be scored and are left out of all metrics, as PML's
``AccuracyCalculator`` does; ``num_lone_queries`` says how many were left out and ``num_queries`` how many
were scored.

The nearest neighbours are searched exactly by one of two backends with the same results (up to the order of
exactly tied similarities): ``"torch"`` (a matrix product and a top-k per chunk of queries, on the device of the
embeddings) and ``"faiss"`` (faiss's exact inner-product search, ``pip install faiss-cpu``, on the CPU); ``"auto"``
takes faiss for galleries of :data:`FAISS_MIN_GALLERY` items or more on the CPU when it is installed, torch otherwise
(see :func:`choose_backend`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from simlearn.errors import UserError

__all__ = ["BACKENDS", "choose_backend", "retrieval_metrics"]

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
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise UserError(
            f"{name} contains NaN or inf in {bad} row(s); all values must be finite. "
            "Check the model/training for divergence or drop those items."
        )
    return F.normalize(t, dim=1)


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


def _check_ks(ks: Sequence[int]) -> list[int]:
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence | np.ndarray):
        raise UserError(f"ks must be a sequence of positive ints such as (1, 5, 10), got {ks!r}.")
    if len(ks) == 0:
        raise UserError("ks is empty; pass at least one positive int, e.g. ks=(1, 5, 10).")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise UserError(f"ks must contain only ints >= 1, got {k!r} in ks={list(ks)!r}.")
    return [int(k) for k in ks]


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
    """The search backend that ``retrieval_metrics(backend=...)`` uses: ``"torch"`` or ``"faiss"``.

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


def retrieval_metrics(
    embeddings,
    labels,
    ks: Sequence[int] = (1, 5, 10),
    gallery_embeddings=None,
    gallery_labels=None,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> dict[str, float]:
    """Exact cosine-similarity retrieval metrics of queries against a gallery, computed in query chunks.

    Args:
        embeddings: (N, d) query embeddings (numpy array or torch tensor, any float dtype). They are
            L2-normalised here, so the similarity is the cosine. Computation runs in float32 on the device of
            ``embeddings`` if it is a tensor, else on the CPU.
        labels: (N,) integer class ids of the queries.
        ks: the k values reported as ``recall@{k}``; each must be <= the number of candidates per query.
        gallery_embeddings, gallery_labels: a separate gallery to search (both or neither). If omitted the
            queries are searched against themselves, leaving each query's own item out (leave-one-out).
        chunk_size: queries per chunk; memory grows with chunk_size x gallery size (torch) or chunk_size x the
            largest R_q (faiss). ``None`` picks it so that a chunk's similarity matrix holds about 2**24 floats
            (torch), or 4096 queries (faiss, which blocks its search by itself).
        backend: ``"torch"``, ``"faiss"`` (CPU; needs ``pip install faiss-cpu``) or ``"auto"``: faiss for
            galleries of at least :data:`FAISS_MIN_GALLERY` items on the CPU when faiss is installed, torch
            otherwise. Both give the same metrics (up to the order of exactly tied similarities).

    Returns:
        ``recall@{k}`` for each k, ``precision@1``, ``r_precision``, ``map@r`` (definitions in the module
        docstring), and ``num_queries`` / ``num_lone_queries``: how many queries were scored and how many were
        left out because no other item of their class is in the gallery (R_q == 0).
    """
    device = embeddings.device if isinstance(embeddings, torch.Tensor) else torch.device("cpu")
    ks = _check_ks(ks)
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
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise UserError(f"chunk_size must be a positive int or None (automatic), got {chunk_size!r}.")

    n_cand = len(g) - int(self_search)
    if max(ks) > n_cand:
        where = "gallery items" if not self_search else "other items (N - 1, leave-one-out)"
        raise UserError(
            f"max(ks) = {max(ks)} but each query has only {n_cand} candidate {where}; "
            f"the largest valid k is {n_cand}. Lower ks or use more data."
        )
    classes, inverse = torch.unique(torch.cat([q_lab, g_lab]), return_inverse=True)
    if len(classes) < 2:
        where = "labels" if self_search else "labels and gallery_labels"
        raise UserError(
            f"only one class ({int(classes[0])}) is present in {where}; retrieval is trivial then. "
            "At least 2 classes are needed."
        )
    q_cls, g_cls = inverse[: len(q)], inverse[len(q) :]
    r_all = torch.bincount(g_cls, minlength=len(classes))[q_cls] - int(self_search)
    num_lone = int((r_all <= 0).sum())
    if num_lone == len(q):
        raise UserError(
            "every query is lone: no query has another item of its class in the gallery, so nothing can be "
            "scored. Make sure query classes also appear in the gallery (and have >= 2 items in self-search)."
        )

    backend = choose_backend(backend, device, len(g))
    if backend == "faiss" and device.type != "cpu":  # faiss searches on the CPU; the metrics follow it there
        q, q_cls, r_all = q.cpu(), q_cls.cpu(), r_all.cpu()
        g, g_cls = (q, q_cls) if self_search else (g.cpu(), g_cls.cpu())
        device = torch.device("cpu")
    search = (_faiss_search if backend == "faiss" else _torch_search)(q, g, self_search)
    if chunk_size is None:
        if backend == "faiss":
            k_max = min(max(max(ks), int(r_all.max())), n_cand)
            chunk_size = max(1, min(_FAISS_MAX_CHUNK, _AUTO_CHUNK_FLOATS // (4 * k_max)))
        else:
            chunk_size = max(1, _AUTO_CHUNK_FLOATS // len(g))
    sums = torch.zeros(len(ks) + 3, dtype=torch.float64, device=device)
    for start in range(0, len(q), chunk_size):
        stop = min(start + chunk_size, len(q))
        r = r_all[start:stop]
        keep = r > 0
        if not keep.any():
            continue
        k = min(max(max(ks), int(r.max())), n_cand)
        idx = search(start, stop, k)[keep]
        r = r[keep]
        rel = g_cls[idx] == q_cls[start:stop][keep].unsqueeze(1)  # (kept, k) relevance by rank
        rank = torch.arange(1, k + 1, device=device)
        rel_r = rel & (rank <= r.unsqueeze(1))  # relevant and within the top R_q
        hits_r = rel_r.cumsum(dim=1)
        r64 = r.double()
        per_query = [rel[:, :kk].any(dim=1).double() for kk in ks]
        per_query.append(rel[:, 0].double())
        per_query.append(hits_r[:, -1].double() / r64)
        per_query.append((hits_r.double() / rank * rel_r).sum(dim=1) / r64)
        sums += torch.stack([v.sum() for v in per_query])

    n_kept = len(q) - num_lone
    means = (sums / n_kept).tolist()
    out = {f"recall@{kk}": means[i] for i, kk in enumerate(ks)}
    out["precision@1"], out["r_precision"], out["map@r"] = means[len(ks) :]
    out["num_queries"] = float(n_kept)
    out["num_lone_queries"] = float(num_lone)
    return out
