"""Evaluators: the metrics of one split's embeddings. The LightningModule calls one after val and test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from simlearn.errors import UserError
from simlearn.evaluation.retrieval import retrieval_metrics


class RetrievalEvaluator:
    """Exact cosine retrieval on ``label_field``: each item of the split is a query against all the others."""

    main_metric = "recall@1"

    def __init__(self, label_field: str, ks: Sequence[int] = (1, 5, 10), chunk_size: int | None = None) -> None:
        self.label_field = label_field
        self.ks = tuple(ks)
        self.chunk_size = chunk_size

    def __call__(self, embeddings: Tensor, fields: Mapping[str, Tensor]) -> dict[str, float]:
        if self.label_field not in fields:
            raise UserError(
                f"evaluation.label_field={self.label_field!r} is not a field of the data; valid: {sorted(fields)}."
            )
        return retrieval_metrics(embeddings, fields[self.label_field], ks=self.ks, chunk_size=self.chunk_size)
