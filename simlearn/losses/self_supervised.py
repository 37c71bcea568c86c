"""Label-free objectives: several augmented views of each image (``data.views``, :mod:`simlearn.data.views`) and a
loss that pulls the views of one image together. None reads a label field: they see the views' embeddings, which
view each row is (:data:`~simlearn.fields.VIEW_FIELD`) and, under DDP, which image (``index``) — never a label.

* :class:`ViewContrastTask`: a pytorch-metric-learning loss on the views: ``NTXentLoss`` through PML's
  ``SelfSupervisedLoss`` (SimCLR: each view's positive is the other view of its image, the rest of the batch its
  negatives) or ``VICRegLoss`` (no negatives: variance, invariance, covariance);
* :class:`MomentumTeacherTask`: BYOL (Grill et al. 2020): a predictor on the encoder's embedding regresses the
  embedding that an exponential moving average of the encoder (the teacher) gives the other view.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch import distributed as dist
from torch.nn import functional as F

from simlearn.errors import UserError
from simlearn.fields import VIEW_FIELD
from simlearn.losses.tasks import Task


def _across_ranks() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ViewTask(Task):
    """A task on ``views`` (≥ 2) views of each image, laid out view-major as :class:`~simlearn.data.views.ViewMaker`
    makes them; ``views`` is what ``data.views`` follows (``${oc.select:loss.views,1}``)."""

    reads_image = True  # no label field to check: the target is the image itself (its other views)

    def __init__(self, views: int = 2, weight: float = 1.0, field: str = "image") -> None:
        super().__init__(field, weight)
        if isinstance(views, bool) or not isinstance(views, int) or views < 2:
            raise UserError(f"loss.views must be an integer ≥ 2 (views of each image compared), got {views!r}.")
        self.views = views

    def split_views(self, embeddings: Tensor, batch: Mapping[str, Tensor]) -> list[Tensor]:
        """The embeddings of each view, in the batch's image order: one (B, D) tensor per view."""
        if VIEW_FIELD not in batch:
            raise UserError(
                f"this label-free loss compares views of each image, but the training batch holds one image per item "
                f"(data.views=1); set data.views={self.views} (it follows loss.views unless data.views is given)."
            )
        count = int(batch[VIEW_FIELD][-1]) + 1
        return list(embeddings.view(count, len(embeddings) // count, -1).unbind(0))


class ViewContrastTask(ViewTask):
    """A PML loss on the views of each image.

    ``loss`` is PML's ``SelfSupervisedLoss`` around a pair loss (``NTXentLoss``: SimCLR) or a loss of two embedding
    sets (``VICRegLoss``). Two views in one process go through the loss exactly as PML defines it. With more views,
    or with ``distributed=True`` under DDP, a ``SelfSupervisedLoss``'s inner loss gets every view with its image as
    the class (what ``SelfSupervisedLoss`` itself does for two views, symmetric), through PML's
    ``DistributedLossWrapper`` across ranks, so the negatives are the views of every rank's images; images are told
    apart by their dataset ``index`` there. VICReg averages over the pairs of views (its statistics over every
    rank's batch under ``distributed=True``).
    """

    def __init__(self, loss: nn.Module, views: int = 2, weight: float = 1.0, distributed: bool = False) -> None:
        super().__init__(views, weight)
        from pytorch_metric_learning.losses import SelfSupervisedLoss

        self.loss = loss
        self.distributed = distributed
        self.contrastive = isinstance(loss, SelfSupervisedLoss)
        if distributed:
            from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

            self.distributed_loss = DistributedLossWrapper(loss.loss if self.contrastive else loss)

    def forward(self, embeddings: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        views = self.split_views(embeddings, batch)
        across_ranks = self.distributed and _across_ranks()
        if self.contrastive:
            if len(views) == 2 and not across_ranks:
                return self.loss(views[0], views[1])
            inner = self.distributed_loss if across_ranks else self.loss.loss
            # each row's image: its dataset index across ranks (a batch's rows of one rank are not another's)
            local = torch.arange(len(views[0]), device=embeddings.device).repeat(len(views))
            return inner(torch.cat(views), batch["index"] if across_ranks else local)
        loss = self.distributed_loss if across_ranks else self.loss
        pairs = [(a, b) for a in range(len(views)) for b in range(a + 1, len(views))]
        return torch.stack([loss(views[a], ref_emb=views[b]) for a, b in pairs]).mean()


class MomentumTeacherTask(ViewTask):
    """BYOL (Grill et al. 2020): the encoder's embedding of one view, through a ``predictor`` (an MLP), regresses the
    teacher's embedding of each other view (loss 2 − 2 cos, averaged over the ordered pairs of views). The teacher is
    a copy of the whole encoder (backbone and head: any backbone and head compose) whose weights follow the encoder's
    by an exponential moving average after every optimiser step, ``teacher ← τ teacher + (1 − τ) encoder``, with τ
    rising from ``momentum`` to 1 along a cosine over the run's optimiser steps (BYOL's schedule); its buffers (batch
    norm statistics) are the encoder's. The teacher and the predictor are the task's modules, so checkpoints hold
    them and a resumed run continues exactly; only the encoder is the model that embeds and is exported.
    """

    def __init__(
        self, embedding_dim: int, hidden_dim: int = 256, momentum: float = 0.99, views: int = 2, weight: float = 1.0
    ) -> None:
        super().__init__(views, weight)
        if not 0 <= momentum < 1:
            raise UserError(f"loss.momentum must be in [0, 1) (BYOL: 0.996), got {momentum}; e.g. loss.momentum=0.99.")
        self.momentum = float(momentum)
        self.predictor = nn.Sequential(
            nn.Linear(embedding_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(True),
            nn.Linear(hidden_dim, embedding_dim),
        )
        #: The momentum copy of the encoder, set by :meth:`attach` (the model calls it with its encoder).
        self.teacher: nn.Module | None = None

    def attach(self, encoder: nn.Module) -> None:
        self.teacher = copy.deepcopy(encoder)
        self.teacher.requires_grad_(False)

    def teacher_momentum(self, step: int, total_steps: float) -> float:
        """τ after optimiser step ``step`` of ``total_steps``: ``momentum`` at the start, 1 at the end (cosine)."""
        if not math.isfinite(total_steps) or total_steps <= 0:
            return self.momentum
        return 1 - (1 - self.momentum) * (math.cos(math.pi * min(step / total_steps, 1.0)) + 1) / 2

    @torch.no_grad()
    def after_optimizer_step(self, encoder: nn.Module, step: int, total_steps: float) -> None:
        tau = self.teacher_momentum(step, total_steps)
        teacher = dict(self.teacher.named_parameters())
        for name, weight in encoder.named_parameters():
            teacher[name].lerp_(weight.detach(), 1 - tau)
        buffers = dict(self.teacher.named_buffers())
        for name, buffer in encoder.named_buffers():
            buffers[name].copy_(buffer)

    def forward(self, embeddings: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        if self.teacher is None:
            raise RuntimeError("MomentumTeacherTask needs its teacher: the model attaches it (Task.attach).")
        online = self.split_views(F.normalize(self.predictor(embeddings), dim=1), batch)
        with torch.no_grad():
            targets = self.split_views(F.normalize(self.teacher(batch["image"]).float(), dim=1), batch)
        pairs = [(a, b) for a in range(len(online)) for b in range(len(online)) if a != b]
        return torch.stack([(2 - 2 * (online[a] * targets[b]).sum(dim=1)).mean() for a, b in pairs]).mean()
