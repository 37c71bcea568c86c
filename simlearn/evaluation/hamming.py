"""Retrieval metrics of binary codes under the Hamming distance, by the query/gallery and lone-query rules of
:mod:`simlearn.evaluation.retrieval` (whose code scores the ranking, through its ``rank=`` seam):

* the metrics of the ranking by the tie rule (equal distances: the lower gallery index first, as for floats):
  ``recall@k``, ``precision@1``, ``r_precision``, ``map@r`` (and ``knn_accuracy@k``);
* ``tie_aware/…``: the same metrics' expected values when the items of each tied block (one Hamming distance) come
  in a uniformly random order (McSherry & Najork, "Computing Information Retrieval Performance Measures Efficiently
  in the Presence of Tied Scores", ECIR 2008), computed in closed form from each query's histogram of distances:
  independent of any tie rule, which moves published hashing mAP by 1-2%;
* ``map@1000``: the hashing literature's mAP over the top 1000 (e.g. DeepHash-pytorch's ``CalcTopMap``): per query
  the mean of the precision at each relevant place among the first 1000 (0 when none is relevant), by the tie rule,
  averaged over the scored (non-lone) queries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from scipy.special import digamma, gammaln

from simlearn.evaluation.retrieval import Ranker, retrieval_metrics
from simlearn.retrieval.codes import distance_chunks, hamming_chunks, pack_codes, unpack_signs
from simlearn.retrieval.exact import NeighbourChunk
from simlearn.retrieval.inputs import QueryGallery, query_gallery

__all__ = ["MAP_AT", "hamming_metrics", "hamming_ranker", "tie_aware_metrics"]

#: the depth of the hashing literature's mAP
MAP_AT = 1000
#: distance entries per chunk of the histogram pass (int64 distances, keys and a relevance mask per entry)
_HISTOGRAM_ENTRIES = 2**22


def hamming_ranker(chunk_size: int | None = None) -> Ranker:
    """A :data:`~simlearn.evaluation.retrieval.Ranker` that ranks the metrics' queries and gallery (the ±1 sign
    vectors of codes, :func:`~simlearn.retrieval.codes.unpack_signs`) by Hamming distance with the tie rule:
    simlearn's own chunked exact search (:func:`~simlearn.retrieval.codes.hamming_chunks`: faiss when installed,
    else numpy's popcount)."""

    def rank(data: QueryGallery, needed: torch.Tensor) -> Iterator[NeighbourChunk]:
        queries = pack_codes(data.queries)
        gallery = None if data.self_search else pack_codes(data.gallery)
        k = int(needed.max()) if len(needed) else 0
        found = hamming_chunks(queries, gallery, k, exclude_self=data.self_search, chunk_size=chunk_size)
        for start, stop, _, indices in found:
            yield NeighbourChunk(start, stop, torch.from_numpy(indices).to(data.device), None, data)

    return rank


def _histograms(data: QueryGallery, codes: tuple[np.ndarray, np.ndarray | None], bits: int, chunk_size: int | None):
    """Per chunk of queries: ``(start, stop, n, m)``, each query's count of gallery items (n) and of relevant ones
    (m) at each Hamming distance 0..bits (its own item left out in self-search)."""
    width = bits + 2  # distances 0..bits, and bits + 1 for the own item
    gallery_classes = data.gallery_classes.cpu().numpy()
    query_classes = data.query_classes.cpu().numpy()
    size = len(gallery_classes)
    chunk = chunk_size or max(1, _HISTOGRAM_ENTRIES // size)
    for start, stop, dist in distance_chunks(codes[0], codes[1], data.self_search, chunk):
        count = stop - start
        flat = (dist + width * torch.arange(count).unsqueeze(1)).numpy().ravel()
        relevant = (gallery_classes[None, :] == query_classes[start:stop, None]).ravel()
        n = np.bincount(flat, minlength=count * width).reshape(count, width)[:, : bits + 1]
        m = np.bincount(flat, weights=relevant, minlength=count * width).reshape(count, width)[:, : bits + 1]
        yield start, stop, n.astype(np.float64), m


def _log_choose(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    return gammaln(x + 1) - gammaln(t + 1) - gammaln(x - t + 1)


def _expected(n: np.ndarray, m: np.ndarray, r: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """Expected recall@k (each k), precision@1, R-precision and MAP@R of queries (rows) whose tied blocks, in order,
    hold ``n`` items of which ``m`` relevant, ``r`` relevant in all (> 0), under a uniformly random order within
    each block (closed forms: module doc)."""
    rows = np.arange(len(n))
    after = np.cumsum(n, axis=1)
    before, hits_before = after - n, np.cumsum(m, axis=1) - m
    p = np.divide(m, n, out=np.zeros_like(m), where=n > 0)

    def block_of(position: np.ndarray) -> np.ndarray:  # the block holding each row's place ``position`` (1-based)
        return (after < position[:, None]).sum(axis=1)

    out = []
    for k in ks:
        b = block_of(np.full(len(n), k))
        t, nb, mb = k - before[rows, b], n[rows, b], m[rows, b]
        none = np.where(nb - mb >= t, np.exp(_log_choose(nb - mb, np.minimum(t, nb - mb)) - _log_choose(nb, t)), 0.0)
        out.append(np.where(hits_before[rows, b] > 0, 1.0, 1.0 - none))
    first = block_of(np.ones(len(n)))
    out.append(p[rows, first])
    b = block_of(r)
    out.append((hits_before[rows, b] + (r - before[rows, b]) * p[rows, b]) / r)
    # MAP@R: sum over places i <= R of E[rel(i) hits(i)] / i; in a block (a items before it, H relevant before,
    # n items, m relevant) place j has E = p (H + 1) + p (m - 1) / (n - 1) (j - 1)
    taken = np.clip(r[:, None] - before, 0, n)  # places of each block within the first R
    alpha = p * (hits_before + 1)
    beta = np.divide(p * (m - 1), n - 1, out=np.zeros_like(p), where=n > 1)
    s1 = np.where(taken > 0, digamma(before + taken + 1) - digamma(before + 1), 0.0)  # sum_j 1 / (a + j)
    s2 = taken - (before + 1) * s1  # sum_j (j - 1) / (a + j)
    out.append((alpha * s1 + beta * s2).sum(axis=1) / r)
    return np.stack(out, axis=1)


def tie_aware_metrics(
    query_codes: Any,
    labels: Any,
    *,
    gallery_codes: Any = None,
    gallery_labels: Any = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
) -> dict[str, float]:
    """The expected ``recall@k``, ``precision@1``, ``r_precision`` and ``map@r`` of packed codes when each block
    of items at one Hamming distance comes in a random order (module doc), over the scored (non-lone) queries."""
    bits = np.asarray(query_codes).shape[1] * 8
    data = query_gallery(unpack_signs(query_codes), labels, _signs(gallery_codes), gallery_labels)
    relevant = data.relevant.cpu().numpy().astype(np.float64)
    sums = np.zeros(len(ks) + 3)
    codes = (np.asarray(query_codes), None if gallery_codes is None else np.asarray(gallery_codes))
    for start, stop, n, m in _histograms(data, codes, bits, chunk_size):
        r = relevant[start:stop]
        keep = r > 0
        if keep.any():
            sums += _expected(n[keep], m[keep], r[keep], ks).sum(axis=0)
    means = sums / max(1, int((relevant > 0).sum()))
    out = {f"recall@{k}": float(means[i]) for i, k in enumerate(ks)}
    out["precision@1"], out["r_precision"], out["map@r"] = (float(v) for v in means[len(ks) :])
    return out


def _signs(codes: Any) -> np.ndarray | None:
    return None if codes is None else unpack_signs(codes)


def _map_at(
    query_codes: np.ndarray,
    labels: Any,
    gallery_codes: np.ndarray | None,
    gallery_labels: Any,
    depth: int,
    chunk_size: int | None,
) -> float:
    """The hashing literature's mAP@depth by the tie rule, over the scored queries (module doc)."""
    data = query_gallery(unpack_signs(query_codes), labels, _signs(gallery_codes), gallery_labels)
    gallery_classes, query_classes = data.gallery_classes.cpu().numpy(), data.query_classes.cpu().numpy()
    relevant = data.relevant.cpu().numpy()
    total, depth = 0.0, min(depth, data.num_candidates)
    for start, stop, _, indices in hamming_chunks(
        query_codes, gallery_codes, depth, exclude_self=data.self_search, chunk_size=chunk_size
    ):
        rel = gallery_classes[indices] == query_classes[start:stop, None]
        rel = rel[relevant[start:stop] > 0]
        hits = np.cumsum(rel, axis=1)
        precision = hits / np.arange(1, rel.shape[1] + 1)
        total += float(((precision * rel).sum(axis=1) / np.maximum(hits[:, -1], 1)).sum())
    return total / max(1, int((relevant > 0).sum()))


def hamming_metrics(
    query_codes: Any,
    labels: Any,
    gallery_codes: Any = None,
    gallery_labels: Any = None,
    ks: Sequence[int] = (1, 5, 10),
    knn_k: int | None = None,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Exact retrieval metrics of packed binary codes under the Hamming distance (module doc): those of
    :func:`~simlearn.evaluation.retrieval.retrieval_metrics` (same checks, definitions, lone queries and counts)
    for the ranking by the tie rule, ``tie_aware/<metric>`` and ``map@1000``. Without a gallery: leave-one-out."""
    query_codes = np.asarray(query_codes)
    gallery_codes = None if gallery_codes is None else np.asarray(gallery_codes)
    out = retrieval_metrics(
        unpack_signs(query_codes),
        labels,
        ks,
        _signs(gallery_codes),
        gallery_labels,
        knn_k=knn_k,
        rank=hamming_ranker(chunk_size),
    )
    out[f"map@{MAP_AT}"] = _map_at(query_codes, labels, gallery_codes, gallery_labels, MAP_AT, chunk_size)
    tied = tie_aware_metrics(
        query_codes, labels, gallery_codes=gallery_codes, gallery_labels=gallery_labels, ks=ks, chunk_size=chunk_size
    )
    out.update({f"tie_aware/{key}": value for key, value in tied.items()})
    return out
