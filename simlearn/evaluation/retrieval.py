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

``knn_accuracy@k`` (:func:`knn_accuracy`, or ``retrieval_metrics(knn_k=k)`` from the same search) is the accuracy
of the majority label of each query's k nearest candidates, over every query, lone ones included.

The nearest neighbours are searched exactly, in chunks of queries, by :mod:`simlearn.retrieval.exact`
(backends ``"torch"``, ``"faiss"`` or ``"auto"``, with the same results): candidates are ranked by their cosine
computed in float64, and candidates with equal cosines by their gallery index, the lower first. So every metric
equals that of a float64 brute force, even where float32 cosines tie or differ below float32 resolution (as they
do for low-dimensional embeddings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from simlearn.errors import UserError
from simlearn.retrieval.exact import BACKENDS, NeighbourChunk, choose_backend, neighbour_chunks
from simlearn.retrieval.inputs import QueryGallery, query_gallery

__all__ = ["BACKENDS", "Ranker", "choose_backend", "knn_accuracy", "per_class_metrics", "retrieval_metrics"]

#: What ranks the candidates the metrics read: ``(checked queries and gallery, places needed per query) -> chunks``,
#: each chunk's ``indices`` the ranked gallery rows of its queries, at least ``needed`` places each.
#: :func:`~simlearn.retrieval.exact.neighbour_chunks` (the exact search) by default; a post-processed ranking
#: (:func:`simlearn.retrieval.postprocess.postprocessed_ranker`) is scored by the same code.
Ranker = Callable[[QueryGallery, torch.Tensor], Iterable[NeighbourChunk]]


def _check_ks(ks: Sequence[int]) -> list[int]:
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence | np.ndarray):
        raise UserError(f"ks must be a sequence of positive ints such as (1, 5, 10), got {ks!r}.")
    if len(ks) == 0:
        raise UserError("ks is empty; pass at least one positive int, e.g. ks=(1, 5, 10).")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise UserError(f"ks must contain only ints >= 1, got {k!r} in ks={list(ks)!r}.")
    return [int(k) for k in ks]


def _check_knn_k(k: int | None, num_candidates: int) -> None:
    if k is None:
        return
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise UserError(f"the k of kNN accuracy must be an integer ≥ 1, got {k!r}; e.g. evaluation.knn_k=5.")
    if k > num_candidates:
        raise UserError(
            f"kNN accuracy with k={k} needs at least {k} neighbours per query, but there are {num_candidates}; "
            f"lower k (evaluation.knn_k) or use more data."
        )


def _knn_correct(data: QueryGallery, start: int, stop: int, idx: torch.Tensor, k: int) -> torch.Tensor:
    """How many queries of the chunk the majority label of their k nearest candidates gets right (a tie goes to the
    smallest label, as in scikit-learn's ``KNeighborsClassifier``). Votes are counted among the k neighbours
    (chunk x k x k), so memory does not grow with the number of classes."""
    neighbours = data.gallery_classes[idx[:, :k]]
    votes = (neighbours.unsqueeze(2) == neighbours.unsqueeze(1)).sum(dim=2)  # each neighbour's class count
    most = votes == votes.amax(dim=1, keepdim=True)
    predicted = torch.where(most, neighbours, len(data.labels)).amin(dim=1)  # smallest class id among the most voted
    return (predicted == data.query_classes[start:stop]).sum()


def _retrieval_values(
    data: QueryGallery, start: int, stop: int, idx: torch.Tensor, ks: list[int], r_max: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per scored query of the chunk: recall@k for each k, precision@1, R-precision, MAP@R (columns), and which
    queries of the chunk were scored (R_q > 0); ``r_max`` is the chunk's largest R_q (known on the host, so no device
    sync here)."""
    r = data.relevant[start:stop]
    keep = r > 0
    r = r[keep]
    k = min(max(max(ks), r_max), data.num_candidates)
    rel = data.gallery_classes[idx[keep, :k]] == data.query_classes[start:stop][keep].unsqueeze(1)  # by rank
    rank = torch.arange(1, k + 1, device=rel.device)
    rel_r = rel & (rank <= r.unsqueeze(1))  # relevant and within the top R_q
    hits_r = rel_r.cumsum(dim=1)
    r64 = r.double()
    per_query = [rel[:, :kk].any(dim=1).double() for kk in ks]
    per_query.append(rel[:, 0].double())
    per_query.append(hits_r[:, -1].double() / r64)
    per_query.append((hits_r.double() / rank * rel_r).sum(dim=1) / r64)
    return torch.stack(per_query, dim=1), keep


def retrieval_metrics(
    embeddings,
    labels,
    ks: Sequence[int] = (1, 5, 10),
    gallery_embeddings=None,
    gallery_labels=None,
    chunk_size: int | None = None,
    backend: str = "auto",
    knn_k: int | None = None,
    rank: Ranker | None = None,
) -> dict[str, float]:
    """Exact cosine-similarity retrieval metrics of queries against a gallery, computed in query chunks.

    Args:
        embeddings: (N, d) query embeddings (numpy array or torch tensor, any float dtype). They are
            L2-normalised here, so the similarity is the cosine. The search runs in float32 on the device of
            ``embeddings`` if it is a tensor, else on the CPU, and near-ties are re-scored in float64.
        labels: (N,) integer class ids of the queries.
        ks: the k values reported as ``recall@{k}``; each must be <= the number of candidates per query.
        gallery_embeddings, gallery_labels: a separate gallery to search (both or neither). If omitted the
            queries are searched against themselves, leaving each query's own item out (leave-one-out).
        chunk_size: queries per chunk; memory grows with chunk_size x gallery size (torch) or chunk_size x the
            largest R_q (faiss). ``None`` picks it from a memory budget per device
            (:func:`~simlearn.retrieval.exact.neighbour_chunks`).
        backend: ``"torch"``, ``"faiss"`` (CPU; needs ``pip install faiss-cpu``) or ``"auto"``: faiss for large
            galleries on the CPU when faiss is installed, torch otherwise (:mod:`simlearn.retrieval.exact`).
            Both give the same metrics: those of a float64 brute force with ties broken by the lower gallery
            index (:mod:`simlearn.retrieval.exact`).
        knn_k: also report ``knn_accuracy@{knn_k}`` (see :func:`knn_accuracy`), from the same search.
        rank: score this ranking instead of the exact search's (a :data:`Ranker`, e.g. a post-processed one); the
            checks, the definitions and the relevant counts stay those of the given queries and gallery.

    Returns:
        ``recall@{k}`` for each k, ``precision@1``, ``r_precision``, ``map@r`` (definitions in the module
        docstring), and ``num_queries`` / ``num_lone_queries``: how many queries were scored and how many were
        left out because no other item of their class is in the gallery (R_q == 0).
    """
    ks = _check_ks(ks)
    data = query_gallery(embeddings, labels, gallery_embeddings, gallery_labels)
    if max(ks) > data.num_candidates:
        where = "gallery items" if not data.self_search else "other items (N - 1, leave-one-out)"
        # the example: the given ks that fit, else the largest k that does
        fitting = ",".join(map(str, sorted({k for k in ks if k <= data.num_candidates}) or [data.num_candidates]))
        raise UserError(
            f"max(ks) = {max(ks)} but each query has only {data.num_candidates} candidate {where}; "
            f"the largest valid k is {data.num_candidates}. Lower evaluation.ks, e.g. evaluation.ks=[{fitting}], "
            f"or use more data."
        )
    _check_knn_k(knn_k, data.num_candidates)
    if len(data.labels) < 2:
        where = "labels" if data.self_search else "labels and gallery_labels"
        raise UserError(
            f"only one class ({int(data.labels[0])}) is present in {where}; retrieval is trivial then. "
            "At least 2 classes are needed."
        )
    r_all = data.relevant
    num_lone = int((r_all <= 0).sum())
    if num_lone == len(r_all):
        raise UserError(
            "every query is lone: no query has another item of its class in the gallery, so nothing can be "
            "scored. Make sure query classes also appear in the gallery (and have >= 2 items in self-search)."
        )
    r_host = r_all.cpu()
    needed = torch.where(r_host > 0, r_host.clamp(min=max(ks)), 0).clamp(min=knn_k or 0)
    sums, correct = 0, 0
    # the metrics read labels only: near-ties among interchangeable candidates need no float64 re-scoring
    interchangeable = "relevance" if knn_k is None else "class"
    if rank is None:
        chunks = neighbour_chunks(data, needed, backend, chunk_size, interchangeable=interchangeable)
    else:
        chunks = rank(data, needed)
    for chunk in chunks:
        start, stop, idx, searched = chunk.start, chunk.stop, chunk.indices, chunk.data
        r_max = int(r_host[start:stop].max())
        if r_max > 0:  # else every query of the chunk is lone: searched for kNN accuracy only
            sums = sums + _retrieval_values(searched, start, stop, idx, ks, r_max)[0].sum(dim=0)
        if knn_k is not None:
            correct = correct + _knn_correct(searched, start, stop, idx, knn_k)

    n_kept = len(r_all) - num_lone
    means = (sums / n_kept).tolist()  # one device-to-host transfer for all the sums
    out = {f"recall@{kk}": means[i] for i, kk in enumerate(ks)}
    out["precision@1"], out["r_precision"], out["map@r"] = means[len(ks) :]
    out["num_queries"] = float(n_kept)
    out["num_lone_queries"] = float(num_lone)
    if knn_k is not None:
        out[f"knn_accuracy@{knn_k}"] = int(correct) / len(r_all)
    return out


def knn_accuracy(
    embeddings,
    labels,
    k: int = 5,
    gallery_embeddings=None,
    gallery_labels=None,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> float:
    """Accuracy of k-nearest-neighbour classification under cosine similarity: each query gets the majority label
    of its k most similar gallery items (a tie goes to the smallest label, as in scikit-learn's
    ``KNeighborsClassifier``). Without a gallery the queries are their own gallery, leave-one-out (a query is not
    its own neighbour). Exact and chunked like :func:`retrieval_metrics` (never an N×N matrix); every query
    counts, including one whose class has no other item.
    """
    data = query_gallery(embeddings, labels, gallery_embeddings, gallery_labels)
    _check_knn_k(k, data.num_candidates)
    needed = torch.full((len(data.queries),), k)
    correct = 0
    for chunk in neighbour_chunks(data, needed, backend, chunk_size, interchangeable="class"):
        correct = correct + _knn_correct(chunk.data, chunk.start, chunk.stop, chunk.indices, k)
    return int(correct) / len(data.queries)


def per_class_metrics(
    embeddings,
    labels,
    gallery_embeddings=None,
    gallery_labels=None,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> list[dict[str, float]]:
    """recall@1 and MAP@R per query class (the same search and definitions as :func:`retrieval_metrics`): one row
    per class with scored queries, ``{"label", "num_queries", "recall@1", "map@r"}``, sorted by label. The means of
    a class's rows weighted by ``num_queries`` give :func:`retrieval_metrics`' values; a class's lone queries are
    left out as there."""
    data = query_gallery(embeddings, labels, gallery_embeddings, gallery_labels)
    r_all = data.relevant
    r_host = r_all.cpu()
    needed = torch.where(r_host > 0, r_host.clamp(min=1), 0)
    values, classes = [], []
    for chunk in neighbour_chunks(data, needed, backend, chunk_size, interchangeable="relevance"):
        start, stop = chunk.start, chunk.stop
        r_max = int(r_host[start:stop].max())
        if r_max > 0:
            v, keep = _retrieval_values(chunk.data, start, stop, chunk.indices, [1], r_max)
            values.append(v[:, [0, 3]].cpu())
            classes.append(chunk.data.query_classes[start:stop][keep].cpu())
    if not values:
        return []
    v, c = torch.cat(values), data.labels.cpu()[torch.cat(classes)]
    rows = []
    for label in c.unique().tolist():
        mine = v[c == label]
        rows.append(
            {
                "label": label,
                "num_queries": len(mine),
                "recall@1": float(mine[:, 0].mean()),
                "map@r": float(mine[:, 1].mean()),
            }
        )
    return rows
