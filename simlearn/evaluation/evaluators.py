"""Evaluators: the metrics of one split's embeddings. The LightningModule calls one after val and test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from simlearn.errors import UserError
from simlearn.evaluation.retrieval import retrieval_metrics

__all__ = ["RetrievalEvaluator"]


class RetrievalEvaluator:
    """Exact cosine retrieval on ``label_field``: each item of the split is a query against all the others.

    ``knn_k`` adds ``knn_accuracy@<k>``: the accuracy of the majority vote of each item's k nearest other items
    (leave-one-out, :func:`~simlearn.evaluation.retrieval.knn_accuracy`), read off the same search; null: off.
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
        return retrieval_metrics(
            embeddings,
            fields[self.label_field],
            self.ks,
            chunk_size=self.chunk_size,
            backend=self.backend,
            knn_k=self.knn_k,
        )
