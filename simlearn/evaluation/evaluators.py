"""Evaluators: the metrics of one split's embeddings. The LightningModule calls one after val and test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from simlearn.errors import UserError
from simlearn.evaluation.retrieval import _AUTO_CHUNK_FLOATS, _as_embeddings, _as_labels, retrieval_metrics

__all__ = ["RetrievalEvaluator", "knn_accuracy"]


def knn_accuracy(
    embeddings,
    labels,
    k: int = 5,
    gallery_embeddings=None,
    gallery_labels=None,
    chunk_size: int | None = None,
) -> float:
    """Accuracy of k-nearest-neighbour classification under cosine similarity: each query gets the majority label
    of its k most similar gallery items (a tie goes to the smallest label, as in scikit-learn's
    ``KNeighborsClassifier``). Without a gallery the queries are their own gallery, leave-one-out (a query is not
    its own neighbour). Exact, in chunks of queries like :func:`retrieval_metrics` (never an N×N matrix); every
    query counts, including one whose class has no other item.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"the k of kNN accuracy must be an integer ≥ 1, got {k!r}; e.g. evaluation.knn_k=5.")
    device = embeddings.device if isinstance(embeddings, Tensor) else torch.device("cpu")
    q = _as_embeddings(embeddings, "embeddings", device)
    q_lab = _as_labels(labels, "labels", len(q), "embeddings", device)
    self_search = gallery_embeddings is None and gallery_labels is None
    if self_search:
        g, g_lab = q, q_lab
    elif gallery_embeddings is None or gallery_labels is None:
        raise UserError("pass gallery_embeddings and gallery_labels together, or neither for leave-one-out.")
    else:
        g = _as_embeddings(gallery_embeddings, "gallery_embeddings", device)
        g_lab = _as_labels(gallery_labels, "gallery_labels", len(g), "gallery_embeddings", device)
        if g.shape[1] != q.shape[1]:
            raise UserError(
                f"gallery_embeddings have dim {g.shape[1]} but embeddings have dim {q.shape[1]}; "
                "queries and gallery must come from the same model."
            )
    candidates = len(g) - int(self_search)
    if k > candidates:
        raise UserError(
            f"kNN accuracy with k={k} needs at least {k} neighbours per query, but there are {candidates}; "
            f"lower k (evaluation.knn_k) or use more data."
        )
    if chunk_size is None:
        chunk_size = max(1, _AUTO_CHUNK_FLOATS // len(g))
    classes, inverse = torch.unique(torch.cat([q_lab, g_lab]), return_inverse=True)
    q_cls, g_cls = inverse[: len(q)], inverse[len(q) :]
    correct = 0
    for start in range(0, len(q), chunk_size):
        stop = min(start + chunk_size, len(q))
        sims = q[start:stop] @ g.T
        if self_search:
            rows = torch.arange(stop - start, device=device)
            sims[rows, rows + start] = float("-inf")
        neighbours = g_cls[sims.topk(k, dim=1).indices]  # (chunk, k) class ids
        votes = torch.zeros(stop - start, len(classes), dtype=torch.int64, device=device)
        votes.scatter_add_(1, neighbours, torch.ones_like(neighbours))
        correct += int((votes.argmax(dim=1) == q_cls[start:stop]).sum())  # argmax: first (smallest) class on ties
    return correct / len(q)


class RetrievalEvaluator:
    """Exact cosine retrieval on ``label_field``: each item of the split is a query against all the others.

    ``knn_k`` adds ``knn_accuracy@<k>``: the accuracy of the majority vote of each item's k nearest other items
    (leave-one-out, :func:`knn_accuracy`); null leaves it out.
    """

    main_metric = "recall@1"

    def __init__(
        self,
        label_field: str,
        ks: Sequence[int] = (1, 5, 10),
        chunk_size: int | None = None,
        knn_k: int | None = None,
        backend: str = "auto",
    ) -> None:
        if knn_k is not None and (isinstance(knn_k, bool) or not isinstance(knn_k, int) or knn_k < 1):
            raise UserError(f"evaluation.knn_k must be null or an integer ≥ 1, got {knn_k!r}; e.g. evaluation.knn_k=5.")
        self.label_field = label_field
        self.ks = tuple(ks)
        self.chunk_size = chunk_size
        self.backend = backend
        self.knn_k = knn_k

    def __call__(self, embeddings: Tensor, fields: Mapping[str, Tensor]) -> dict[str, float]:
        if self.label_field not in fields:
            raise UserError(
                f"evaluation.label_field={self.label_field!r} is not a field of the data; valid: {sorted(fields)}."
            )
        labels = fields[self.label_field]
        metrics = retrieval_metrics(embeddings, labels, ks=self.ks, chunk_size=self.chunk_size, backend=self.backend)
        if self.knn_k is not None:
            metrics[f"knn_accuracy@{self.knn_k}"] = knn_accuracy(
                embeddings, labels, k=self.knn_k, chunk_size=self.chunk_size
            )
        return metrics
