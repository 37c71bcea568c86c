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
    #: Learning rate of this task's own parameters (class weights, proxies) as a multiple of ``optimizer.lr``.
    lr_multiplier: float = 1.0

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

    def attach(self, encoder: nn.Module) -> None:
        """Called once by the model with the encoder it trains, before any compilation: a task that keeps a copy of
        it (a momentum teacher) makes it here. Nothing by default."""

    def after_optimizer_step(self, encoder: nn.Module, step: int, total_steps: float) -> None:
        """Called by the model after every optimiser step (``step``: the steps done, of ``total_steps``, which may be
        inf): a momentum teacher follows the encoder here. Nothing by default."""


class MetricTask(Task):
    """A pytorch-metric-learning loss (and optional miner) on the embedding, with class labels from ``field``.

    Classifier losses (``NormalizedSoftmaxLoss``, ``CosFaceLoss``, ``ArcFaceLoss``, ``SubCenterArcFaceLoss``…)
    keep their class weights in ``loss.W`` (embedding_dim × classes·sub_centres), proxy losses (``ProxyAnchorLoss``,
    ``ProxyNCALoss``) their proxies in ``loss.proxies`` (classes × embedding_dim); for both, :meth:`predict` gives
    the cosine classifier's decision (the nearest class weight, sub-centre or proxy) and :attr:`class_weights` one
    direction per class. ``lr_multiplier`` scales ``optimizer.lr`` for the task's own parameters (proxies usually
    learn 100× faster than the network: Proxy Anchor, Kim et al. 2020).

    A loss wrapped in PML's ``CrossBatchMemory`` (XBM, Wang et al. 2020: pairs between the batch and the embeddings
    of recent batches) mines with the wrapper's own miner, between the batch and its memory; a miner of the task
    would mine within the batch only, so it is refused.

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
        lr_multiplier: float = 1.0,
    ) -> None:
        super().__init__(field, weight)
        if not lr_multiplier > 0:
            raise UserError(f"loss.lr_multiplier must be > 0, got {lr_multiplier}; e.g. loss.lr_multiplier=100.")
        from pytorch_metric_learning.losses import CrossBatchMemory

        if isinstance(loss, CrossBatchMemory):
            _check_memory_miner(loss, miner)
        self.loss = loss
        self.miner = miner
        self.distributed = distributed
        self.lr_multiplier = float(lr_multiplier)
        if distributed:
            from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper

            self.distributed_loss = DistributedLossWrapper(loss)
            self.distributed_miner = DistributedMinerWrapper(miner) if miner is not None else None

    def _classifier(self) -> tuple[Tensor, int] | None:
        """The loss's class weights as (embedding_dim, classes × sub-centres) and the number of sub-centres per class
        (class c owns columns c·k … c·k+k−1, as in PML's ``SubCenterArcFaceLoss``); None for other losses."""
        weights = getattr(self.loss, "W", None)
        if isinstance(weights, Tensor) and weights.dim() == 2:
            return weights, int(getattr(self.loss, "sub_centers", 1) or 1)
        proxies = getattr(self.loss, "proxies", None)
        if isinstance(proxies, Tensor) and proxies.dim() == 2:
            return proxies.t(), 1
        return None

    @property
    def class_weights(self) -> Tensor | None:
        """One direction per class, (embedding_dim, classes): the class weights or proxies (with sub-centres: the
        mean of a class's unit sub-centres); None for losses without."""
        classifier = self._classifier()
        if classifier is None:
            return None
        weights, sub_centers = classifier
        if sub_centers == 1:
            return weights
        return F.normalize(weights, dim=0).view(weights.shape[0], -1, sub_centers).mean(dim=2)

    def check_targets(self, targets: Tensor) -> None:
        if self.class_weights is not None and int(targets.max()) >= self.class_weights.shape[1]:
            raise UserError(
                f"the classifier for field {self.field!r} has {self.class_weights.shape[1]} classes but the data "
                f"has label {int(targets.max())}; set its num_classes to at least {int(targets.max()) + 1}."
            )

    def forward(self, embeddings: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        labels = batch[self.field]
        memory = getattr(self.loss, "embedding_memory", None)
        if memory is not None and len(embeddings) > len(memory):
            raise UserError(
                f"CrossBatchMemory holds {len(memory)} embeddings, fewer than a batch ({len(embeddings)}); set "
                f"loss.loss.memory_size to at least the batch size (a few batches or more: e.g. "
                f"loss.loss.memory_size={4 * len(embeddings)}), or lower data.batch_size."
            )
        across_ranks = self.distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        loss = self.distributed_loss if across_ranks else self.loss
        miner = self.distributed_miner if across_ranks else self.miner
        indices = miner(embeddings, labels) if miner is not None else None
        return loss(embeddings, labels, indices)

    def predict(self, embeddings: Tensor) -> Tensor | None:
        classifier = self._classifier()
        if classifier is None:
            return None
        weights, sub_centers = classifier
        cos = F.normalize(embeddings, dim=1) @ F.normalize(weights, dim=0)
        return cos.view(len(embeddings), -1, sub_centers).amax(dim=2).argmax(dim=1)


def _check_memory_miner(memory: nn.Module, miner: nn.Module | None) -> None:
    """Refuse a miner given to the task of a ``CrossBatchMemory`` loss: it must be the memory's own (``loss.miner``)
    to mine between the batch and the memory. (PML itself refuses losses the memory cannot wrap.)"""
    if miner is not None:
        raise UserError(
            "loss.miner is set but loss.loss is a CrossBatchMemory: give the miner to the memory (loss.loss.miner) "
            "so that it mines between the batch and the memory, and set loss.miner=null (see configs/loss/xbm_*.yaml)."
        )


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
            raise UserError("loss.tasks is empty: give at least one task (see configs/loss/digits_multitask.yaml).")
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
