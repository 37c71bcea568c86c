"""Training objectives on the embedding. Each task reads one label field of the batch and returns a scalar.

Metric losses, miners and cosine classifiers come from pytorch-metric-learning; a task only routes the right
label field to them and weights the result.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch import distributed as dist
from torch.nn import functional as F

from simlearn.errors import UserError


class Task(nn.Module):
    """One objective: ``forward(embeddings, batch)`` → scalar loss, computed from ``batch[field]``."""

    #: True for tasks whose target is the input image (``batch["image"]``), not a label field.
    reads_image: bool = False

    def __init__(self, field: str, weight: float = 1.0) -> None:
        super().__init__()
        if weight < 0:
            raise UserError(f"loss weight for field {field!r} must be ≥ 0, got {weight}.")
        self.field = field
        self.weight = float(weight)

    def check_targets(self, targets: Tensor) -> None:
        """Raise :class:`UserError` when the data's values for this field cannot be learned by this task."""

    def predict(self, embeddings: Tensor) -> Tensor | None:
        """Predicted label per embedding, for tasks that have a predictor (None otherwise)."""
        return None


class MetricTask(Task):
    """A pytorch-metric-learning loss (and optional miner) on the embedding, with class labels from ``field``.

    Classifier losses (``NormalizedSoftmaxLoss``, ``CosFaceLoss``, ``ArcFaceLoss``…) keep their class weights
    in ``loss.W`` (embedding_dim × classes); for them :meth:`predict` gives the cosine classifier's decision.

    ``distributed=True`` wraps loss and miner in PML's ``DistributedLossWrapper`` / ``DistributedMinerWrapper`` so
    that, under DDP, pairs and triplets are formed with the embeddings of all ranks (plain losses otherwise).
    """

    def __init__(
        self,
        field: str,
        loss: nn.Module,
        miner: nn.Module | None = None,
        weight: float = 1.0,
        distributed: bool = False,
    ) -> None:
        super().__init__(field, weight)
        self.loss = loss
        self.miner = miner
        self.distributed = distributed
        if distributed:
            from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper

            self.distributed_loss = DistributedLossWrapper(loss)
            self.distributed_miner = DistributedMinerWrapper(miner) if miner is not None else None

    @property
    def class_weights(self) -> Tensor | None:
        weights = getattr(self.loss, "W", None)
        return weights if isinstance(weights, Tensor) and weights.dim() == 2 else None

    def check_targets(self, targets: Tensor) -> None:
        if self.class_weights is not None and int(targets.max()) >= self.class_weights.shape[1]:
            raise UserError(
                f"the classifier for field {self.field!r} has {self.class_weights.shape[1]} classes but the data "
                f"has label {int(targets.max())}; set its num_classes to at least {int(targets.max()) + 1}."
            )

    def forward(self, embeddings: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        labels = batch[self.field]
        across_ranks = self.distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        loss = self.distributed_loss if across_ranks else self.loss
        miner = self.distributed_miner if across_ranks else self.miner
        indices = miner(embeddings, labels) if miner is not None else None
        return loss(embeddings, labels, indices)

    def predict(self, embeddings: Tensor) -> Tensor | None:
        if self.class_weights is None:
            return None
        return (F.normalize(embeddings, dim=1) @ F.normalize(self.class_weights, dim=0)).argmax(dim=1)


class RegressionTask(Task):
    """A linear read-out of a numeric field from the embedding, trained with MSE on ``(y - center) / scale``.

    On unit-length embeddings a linear read-out orders the items along one direction by value, so items with
    nearby values get nearby embeddings.
    """

    def __init__(
        self, field: str, embedding_dim: int, weight: float = 1.0, center: float = 0.0, scale: float = 1.0
    ) -> None:
        super().__init__(field, weight)
        if scale <= 0:
            raise UserError(f"regression scale for field {field!r} must be > 0, got {scale}.")
        self.readout = nn.Linear(embedding_dim, 1)
        self.center = center
        self.scale = scale

    def forward(self, embeddings: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        target = (batch[self.field].float() - self.center) / self.scale
        return F.mse_loss(self.readout(embeddings).squeeze(1), target)

    def predict(self, embeddings: Tensor) -> Tensor:
        return self.readout(embeddings).squeeze(1) * self.scale + self.center


class MultiTaskLoss(nn.Module):
    """Named tasks on one embedding; the total is the weighted sum of their losses."""

    def __init__(self, tasks: Mapping[str, Task]) -> None:
        super().__init__()
        if not tasks:
            raise UserError("loss.tasks is empty: give at least one task (see configs/loss/multitask.yaml).")
        self.tasks = nn.ModuleDict(dict(tasks))

    @classmethod
    def wrap(cls, loss: MultiTaskLoss | Task) -> MultiTaskLoss:
        """A single task becomes a one-task loss named after its field."""
        if isinstance(loss, MultiTaskLoss):
            return loss
        if isinstance(loss, Task):
            return cls({loss.field: loss})
        raise UserError(
            f"loss must build a simlearn Task or MultiTaskLoss, got {type(loss).__name__}; wrap a PML loss in "
            f"simlearn.losses.MetricTask (see configs/loss/triplet.yaml)."
        )

    @property
    def fields(self) -> dict[str, str]:
        return {name: task.field for name, task in self.tasks.items()}

    def check_fields(self, available: Mapping[str, Tensor]) -> None:
        """Every task's field must exist in the data, with values the task can learn (image tasks: no field)."""
        for name, task in self.tasks.items():
            if task.reads_image:
                continue
            if task.field not in available:
                raise UserError(
                    f"loss task {name!r} reads label field {task.field!r}, which the data does not have; "
                    f"the data provides {sorted(available)}."
                )
            task.check_targets(available[task.field])

    def forward(self, embeddings: Tensor, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        parts = {name: task(embeddings, batch) for name, task in self.tasks.items()}
        total = torch.stack([self.tasks[name].weight * value for name, value in parts.items()]).sum()
        return {"loss": total, **parts}
