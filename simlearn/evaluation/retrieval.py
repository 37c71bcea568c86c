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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from simlearn.errors import UserError

__all__ = ["retrieval_metrics"]

_AUTO_CHUNK_FLOATS = 2**24  # similarity-matrix entries per automatic chunk
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


def retrieval_metrics(
    embeddings,
    labels,
    ks: Sequence[int] = (1, 5, 10),
    gallery_embeddings=None,
    gallery_labels=None,
    chunk_size: int | None = None,
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
        chunk_size: queries per chunk; memory grows with chunk_size x gallery size. ``None`` picks it so that
            a chunk's similarity matrix holds about 2**24 floats.

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

    if chunk_size is None:
        chunk_size = max(1, _AUTO_CHUNK_FLOATS // len(g))
    sums = torch.zeros(len(ks) + 3, dtype=torch.float64, device=device)
    for start in range(0, len(q), chunk_size):
        stop = min(start + chunk_size, len(q))
        r = r_all[start:stop]
        keep = r > 0
        if not keep.any():
            continue
        sims = q[start:stop] @ g.T
        if self_search:
            rows = torch.arange(stop - start, device=device)
            sims[rows, rows + start] = float("-inf")
        k = min(max(max(ks), int(r.max())), n_cand)
        idx = sims.topk(k, dim=1).indices[keep]
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
