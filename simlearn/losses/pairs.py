"""Training on known pairs only: each batch says which of its images form a pair and whether the pair is similar."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from simlearn.errors import UserError
from simlearn.losses.tasks import Task


def pair_indices(pair: Tensor, similar: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PML's pair ``indices_tuple`` ``(a1, p, a2, n)`` from per-image pair ids and labels.

    Each pair id must occur exactly twice in the batch (its two images, in any order); ``(a1[i], p[i])`` are the
    positions of the i-th similar pair, ``(a2[j], n[j])`` those of the j-th dissimilar one. No other combination of
    the batch's images is used: nothing is known about them.
    """
    if pair.shape != similar.shape or pair.dim() != 1:
        raise UserError(
            f"pair and similar must be 1-D and of equal length, got {tuple(pair.shape)}, {tuple(similar.shape)}."
        )
    order = torch.sort(pair, stable=True).indices
    first, second = order[0::2], order[1::2]
    if len(first) != len(second) or not torch.equal(pair[first], pair[second]):
        raise UserError(
            "every pair id must occur exactly twice in a batch (its two images); use data=pairs_csv, whose batches "
            "hold both images of every pair."
        )
    if not torch.equal(similar[first], similar[second]):
        raise UserError("the two images of a pair carry different 'similar' labels.")
    positive = similar[first] == 1
    return first[positive], second[positive], first[~positive], second[~positive]


class PairTask(Task):
    """A PML pair loss (e.g. ``ContrastiveLoss`` on cosine similarity) on the batch's known pairs.

    Reads ``batch["pair"]`` (pair id per image) and ``batch[field]`` (``similar``: 1 similar, 0 dissimilar) and
    feeds the loss ``labels=None`` with the pairs as its ``indices_tuple``, so no pair is inferred from labels.
    """

    def __init__(self, loss: nn.Module, field: str = "similar", pair_field: str = "pair", weight: float = 1.0) -> None:
        super().__init__(field, weight)
        self.loss = loss
        self.pair_field = pair_field

    def check_targets(self, targets: Tensor) -> None:
        values = set(targets.unique().tolist())
        if not values <= {0, 1}:
            raise UserError(
                f"pair task reads field {self.field!r} as 1 (similar) / 0 (dissimilar), but the data has values "
                f"{sorted(values)}; use data=pairs_csv, or loss=softmax/contrastive/triplet for class labels."
            )

    def forward(self, embeddings: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        if self.pair_field not in batch:
            raise UserError(
                f"pair task needs a {self.pair_field!r} field in each batch (which images form a pair); "
                f"the batch has {sorted(batch)}. Use data=pairs_csv."
            )
        indices = pair_indices(batch[self.pair_field], batch[self.field])
        loss = self.loss(embeddings, None, indices)
        # PML returns a plain 0 when a batch has no usable pairs; keep the graph so that backward still works.
        return loss if isinstance(loss, Tensor) and loss.requires_grad else embeddings.sum() * 0.0 + loss
