"""The LightningModule: trains an encoder with a (multi-task) loss and evaluates retrieval on val/test."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from simlearn.data.copies import near_duplicates
from simlearn.errors import UserError
from simlearn.evaluation.evaluators import RetrievalEvaluator, has_labels
from simlearn.evaluation.label_free import MAX_COPY_QUERIES, copy_queries, label_free_metrics
from simlearn.fields import COPY_EMBEDDINGS
from simlearn.losses import MultiTaskLoss, Task
from simlearn.models.encoder import Encoder


class NonFiniteTrainingError(UserError):
    """The training loss (or the weights) became NaN or inf: training stops there, and nothing of that state is saved,
    so the checkpoints of earlier epochs stay as they were."""


#: The seed of the test copies: the same copies for every run, so that runs compare on the same task.
COPY_SEED = 0

#: Learning rates users usually start from, by optimiser (class name); others: 1e-3.
USUAL_LEARNING_RATES = {"SGD": 0.1, "Adagrad": 0.01, "Adadelta": 1.0, "LBFGS": 1.0}


def suggested_learning_rate(optimizer: str, diverged: float) -> float:
    """A learning rate to try after ``diverged`` made the loss NaN or inf: the optimiser's usual one (Adam and AdamW
    1e-3, SGD 0.1), never more than a tenth of what diverged. ``optimizer``: its class name or ``_target_``."""
    usual = USUAL_LEARNING_RATES.get(optimizer.rpartition(".")[2], 1e-3)
    return min(usual, float(f"{diverged / 10:.2g}"))


class Evaluator(Protocol):
    """Metrics of one split: ``evaluator(embeddings, label_fields, split) -> {name: value}`` (``split``: "val" or
    "test", for metrics only worth computing at test)."""

    main_metric: str

    def __call__(self, embeddings: Tensor, fields: Mapping[str, Tensor], split: str = "test") -> dict[str, float]: ...


@dataclass
class EmbeddingSet:
    """Embeddings of one split with every label field, in dataset order."""

    embeddings: np.ndarray
    fields: dict[str, np.ndarray]
    index: np.ndarray


class EmbeddingModule(pl.LightningModule):
    """Encoder + loss. Validation and test collect the embeddings and label fields of the whole split, then log
    ``{split}/<metric>`` for the evaluator's metrics (exact cosine retrieval by default) plus the accuracy
    (classification) or mean absolute error (regression) of every task that can predict.
    """

    def __init__(
        self,
        encoder: Encoder,
        loss: MultiTaskLoss | Task,
        optimizer: Callable[[Iterable[Tensor]], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        evaluator: Evaluator | None = None,
        config: Mapping[str, Any] | None = None,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.loss = MultiTaskLoss.wrap(loss)
        self.channels_last = channels_last
        if channels_last:
            self.encoder.to(memory_format=torch.channels_last)
        for task in self.loss.tasks.values():  # a momentum teacher copies the encoder as built, before compiling it
            task.attach(encoder)
        if compile:
            self.encoder.compile()  # in place: parameter names (and so checkpoints) stay the same
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.evaluator = evaluator or RetrievalEvaluator(label_field="label")
        #: The resolved build config, stored in checkpoints so that ``simlearn-eval`` can rebuild the model.
        self.config = dict(config or {})
        self._outputs: dict[str, list[Tensor]] = defaultdict(list)
        #: Per split ("val", "test"): the last evaluation's embeddings and its metrics (full precision).
        self.results: dict[str, EmbeddingSet] = {}
        self.metrics: dict[str, dict[str, float]] = {}
        #: The share of an evaluated split's items that are copy-detection queries (set at each epoch's start).
        self._copy_share = 1.0
        #: Why training stopped on a non-finite loss; from then on no checkpoint of this state may be saved.
        self._diverged: str | None = None
        #: The run's optimiser steps (Lightning's estimate), for tasks that follow a schedule over the run.
        self._total_steps: float | None = None

    def forward(self, images: Tensor) -> Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.encoder(images)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        embeddings = self(batch["image"])
        # losses in float32 under any precision: PML casts its class weights to the embeddings' dtype in place, so
        # bf16 embeddings would turn those parameters (and their optimiser updates) into bf16
        with torch.autocast(embeddings.device.type, enabled=False):
            losses = self.loss(embeddings.float(), batch)
            quantization = getattr(self.encoder.head, "quantization_loss", None)  # a hashing head's own term
            if quantization is not None and self.encoder.head.quantization > 0:
                losses["quantization"] = quantization(embeddings.float())
                losses["loss"] = losses["loss"] + losses["quantization"]
        total = losses.pop("loss")
        self._stop_unless_finite(total, batch_idx)
        batch_size = len(batch["image"])
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        if len(losses) > 1:
            self.log_dict({f"train/loss_{name}": value for name, value in losses.items()}, batch_size=batch_size)
        return total

    def _stop_unless_finite(self, loss: Tensor, batch_idx: int) -> None:
        """Raise :class:`NonFiniteTrainingError` at the first NaN or inf training loss, before its backward pass.

        Without this a diverged run trains a whole epoch on NaN and is only noticed by the next validation (or, when
        no validation follows the epoch, its NaN weights are saved over ``last.ckpt``). The loss differs by rank, so
        under DDP the ranks first agree (one small all-reduce) and all stop at the same batch: a rank that raised
        alone would leave the others in the gradient all-reduce of their backward pass, blocked until the collective
        times out (NCCL) or failing with a traceback when the peer goes away (gloo: "Connection closed by peer").
        """
        loss = loss.detach()
        finite = bool(torch.isfinite(loss).all())  # one host sync (the progress bar reads the loss anyway)
        if self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        value = f"{float(loss):g}" if not finite else f"not finite on another process (here {float(loss):.4g})"
        self._diverged = (
            f"training loss is {value} at epoch {self.current_epoch}, batch {batch_idx} (global step "
            f"{self.global_step}); stopped there, saving no checkpoint of this state (the earlier ones are kept). "
            f"{self._divergence_advice()}"
        )
        raise NonFiniteTrainingError(self._diverged)

    def _divergence_advice(self) -> str:
        """The likely cause and fix of a diverged loss, with this run's learning rates."""
        trainer = self._trainer
        optimizer = trainer.optimizers[0] if trainer is not None and trainer.optimizers else None
        now = optimizer.param_groups[0]["lr"] if optimizer is not None else None
        optimizer_config = self.config.get("optimizer") or {}
        configured = optimizer_config.get("lr", now)
        advice = "The learning rate is likely too high"
        if now is not None:
            advice += f" (now {now:g})"
        diverged = [lr for lr in (configured, now) if isinstance(lr, int | float) and lr > 0]
        if diverged:
            name = type(optimizer).__name__ if optimizer is not None else str(optimizer_config.get("_target_", ""))
            advice += f": lower optimizer.lr, e.g. optimizer.lr={suggested_learning_rate(name, min(diverged)):g}"
        else:
            advice += ": lower optimizer.lr"
        advice += ", or clip gradients with trainer.gradient_clip_val=1.0"
        if trainer is not None and trainer.ckpt_path:
            advice += " (a resumed run keeps its checkpoint's learning rate, so lower optimizer.lr in a new run)"
        return advice + "."

    # -- evaluation ----------------------------------------------------------------------------------------
    def _collect(self, batch: Mapping[str, Tensor], copies: bool) -> None:
        # float32 whatever the training precision: the metrics and task heads evaluate in float32
        self._outputs["embeddings"].append(self(batch["image"]).detach().float())
        # the label-free metrics' copies: at test, and at validation of data without labels (its only metrics)
        unlabelled = not has_labels({key: value for key, value in batch.items() if key not in ("image", "index")})
        if (copies or unlabelled) and (copied := self._copy_embeddings(batch)) is not None:
            self._outputs[COPY_EMBEDDINGS].append(copied)
        for key, value in batch.items():
            if key != "image":
                self._outputs[key].append(value.detach())

    def _copy_embeddings(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        """The embeddings of the batch's near-duplicate copies (:mod:`simlearn.data.copies`, item ``index`` edited as
        that item always is): a row per item, NaN for the items that are no copy-detection query
        (:func:`~simlearn.evaluation.label_free.copy_queries`: at most about ``MAX_COPY_QUERIES`` per split); None
        without the preprocessing to undo (a model built by hand)."""
        preprocessing = self.config.get("preprocessing") or {}
        images = batch["image"]
        if "mean" not in preprocessing or "std" not in preprocessing or images.dim() != 4:
            return None
        chosen = copy_queries(batch["index"], self._copy_share)
        out = torch.full((len(images), self.encoder.embedding_dim), float("nan"), device=images.device)
        if bool(chosen.any()):
            out[chosen] = self(self._copies(images[chosen], batch["index"][chosen], preprocessing)).detach().float()
        return out

    @staticmethod
    def _copies(images: Tensor, index: Tensor, preprocessing: Mapping[str, Any]) -> Tensor:
        """The copies of model inputs ``images`` (items ``index``), normalised as the model's input."""
        shape = (1, images.shape[1], 1, 1)
        mean = torch.tensor(preprocessing["mean"], dtype=torch.float32, device=images.device).view(shape)
        std = torch.tensor(preprocessing["std"], dtype=torch.float32, device=images.device).view(shape)
        # the edits work on pixels in [0, 1]: the normalisation is undone, then redone on the copies
        pixels = (images.float() * std + mean).clamp(0, 1)
        return ((near_duplicates(pixels, index, seed=COPY_SEED) - mean) / std).to(images.dtype)

    def _evaluate(self, split: str) -> dict[str, float]:
        outputs = self._gathered_outputs()
        embeddings = outputs.pop("embeddings")
        copies = outputs.pop(COPY_EMBEDDINGS, None)
        index = outputs.pop("index")
        metrics = None
        if self.global_rank == 0:
            # defensive: the metrics stay float32 whatever autocast context a caller or a Lightning version runs
            # this hook in
            with torch.autocast(embeddings.device.type, enabled=False):
                metrics = {**self.evaluator(embeddings, outputs, split), **self._task_metrics(embeddings, outputs)}
                if copies is not None:
                    metrics.update(label_free_metrics(embeddings, copies))
        if self.trainer.world_size > 1:
            metrics = self.trainer.strategy.broadcast(metrics, src=0)
        self.metrics[split] = metrics
        self.results[split] = EmbeddingSet(
            embeddings=embeddings.float().cpu().numpy(),
            fields={key: value.cpu().numpy() for key, value in outputs.items()},
            index=index.cpu().numpy(),
        )
        # identical on every rank after the broadcast, so averaging across ranks (sync_dist) leaves them exact
        for key, value in metrics.items():
            self.log(f"{split}/{key}", float(value), prog_bar=key == self.evaluator.main_metric, sync_dist=True)
        return metrics

    def _gathered_outputs(self) -> dict[str, Tensor]:
        """This split's outputs from every rank, once each, in dataset order.

        Under DDP each rank saw a shard that the DistributedSampler padded with repeated items so that all shards
        have equal length; gathering, dropping the repeats by dataset index and sorting by it gives exactly what a
        single process collects, so the metrics do not depend on the number of processes.
        """
        outputs = {key: torch.cat(values) for key, values in self._outputs.items()}
        self._outputs.clear()
        if self.trainer.world_size > 1:
            outputs = {key: value.flatten(0, 1) for key, value in self.all_gather(outputs).items()}
        index = outputs["index"]
        unique, inverse = torch.unique(index, return_inverse=True)
        positions = torch.arange(len(index), device=index.device)
        first = torch.full_like(unique, len(index)).scatter_reduce(0, inverse, positions, reduce="amin")
        return {key: value[first] for key, value in outputs.items()}

    def _task_metrics(self, embeddings: Tensor, fields: Mapping[str, Tensor]) -> dict[str, float]:
        metrics = {}
        for name, task in self.loss.tasks.items():
            predicted = task.predict(embeddings)
            if predicted is None or task.field not in fields:
                continue
            target = fields[task.field]
            weights = getattr(task, "class_weights", None)
            if weights is not None and len(target) and int(target.max()) >= weights.shape[1]:
                continue  # classes the classifier was never given (an unseen-class split): nothing to score
            if predicted.is_floating_point():
                metrics[f"mae_{name}"] = (predicted - target.float()).abs().mean().item()
            else:
                metrics[f"accuracy_{name}"] = (predicted == target).float().mean().item()
        return metrics

    def _share_of_copies(self, split: str) -> None:
        """Which share of the split's items are copy-detection queries: all of a small split, about
        :data:`~simlearn.evaluation.label_free.MAX_COPY_QUERIES` of a large one (the edits of a 224-pixel photo take
        about 40 ms of a core)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        dataset = getattr(datamodule, "datasets", {}).get(split) if datamodule is not None else None
        self._copy_share = 1.0 if dataset is None else min(1.0, MAX_COPY_QUERIES / max(1, len(dataset)))

    def on_validation_epoch_start(self) -> None:
        self._share_of_copies("val")

    def on_test_epoch_start(self) -> None:
        self._share_of_copies("test")

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._collect(batch, copies=False)

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val")

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._collect(batch, copies=True)

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")

    # -- optimisation and checkpoints ----------------------------------------------------------------------
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser's step, then each task's :meth:`~simlearn.losses.Task.after_optimizer_step` (a momentum
        teacher follows the encoder): once per optimiser step, also when gradients are accumulated."""
        super().optimizer_step(*args, **kwargs)
        if self._total_steps is None:  # Lightning computes it from the loaders: once
            self._total_steps = float(self.trainer.estimated_stepping_batches)
        for task in self.loss.tasks.values():
            task.after_optimizer_step(self.encoder, self.global_step, self._total_steps)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameter_groups())
        for group in optimizer.param_groups:  # the optimiser filled in its lr; a task's own parameters scale it
            group["lr"] *= group.get("lr_multiplier", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer, **self._scaled_rates(optimizer))},
        }

    def _scaled_rates(self, optimizer: torch.optim.Optimizer) -> dict[str, list[float]]:
        """The scheduler's own learning rates, one per parameter group scaled by its ``lr_multiplier``.

        A scheduler that sets the rates itself (OneCycleLR's ``max_lr``, CyclicLR's ``base_lr``/``max_lr``) would
        otherwise give every group the same rate and silently undo a task's multiplier; given a list, it gives each
        group its own (the others follow the groups' scaled ``lr``, which needs nothing)."""
        multipliers = [float(group.get("lr_multiplier", 1.0)) for group in optimizer.param_groups]
        keywords = getattr(self.scheduler_factory, "keywords", None) or {}  # Hydra's _partial_: a functools.partial
        if all(m == 1.0 for m in multipliers):
            return {}
        return {
            key: [float(keywords[key]) * m for m in multipliers]
            for key in ("max_lr", "base_lr")
            if isinstance(keywords.get(key), int | float) and not isinstance(keywords.get(key), bool)
        }

    def parameter_groups(self) -> Iterable[Tensor] | list[dict[str, Any]]:
        """Every parameter; or, when a loss task sets ``lr_multiplier`` (proxies, class weights), one parameter group
        per such task, marked with its multiplier, and one for the rest (encoder and the other tasks)."""
        scaled = [task for task in self.loss.tasks.values() if getattr(task, "lr_multiplier", 1.0) != 1.0]
        if not scaled:
            return self.parameters()
        groups, taken = [], set()
        for task in scaled:
            params = [p for p in task.parameters() if id(p) not in taken]
            taken.update(id(p) for p in params)
            if params:
                groups.append({"params": params, "lr_multiplier": float(task.lr_multiplier)})
        return [{"params": [p for p in self.parameters() if id(p) not in taken]}, *groups]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # never save a diverged state over a good checkpoint, whatever the callbacks' settings (save_on_exception,
        # every_n_train_steps, no validation): raising here is the only way a module can stop a save. Buffers too:
        # BatchNorm statistics can overflow while the training loss stays finite. Every rank saves (rank 0 writes),
        # and DDP ranks update their BatchNorm statistics locally, so they agree first: all raise or none does.
        if self._diverged is not None:
            raise NonFiniteTrainingError(self._diverged)
        tensors = [
            (name, t.detach())
            for name, t in [*self.named_parameters(), *self.named_buffers()]
            if t.is_floating_point() and t.numel()
        ]
        finite = not tensors or bool(torch.stack([torch.isfinite(t).all() for _, t in tensors]).all())
        if self._trainer is not None:  # saved by a Trainer (always, in simlearn)
            finite = self._trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            bad = [name for name, t in tensors if not bool(torch.isfinite(t).all())]
            where = f"({', '.join(bad[:3])}{', …' if len(bad) > 3 else ''})" if bad else "on another process"
            self._diverged = (
                f"the weights hold NaN or inf {where} at epoch "
                f"{self.current_epoch} (global step {self.global_step}); not saving this checkpoint (the earlier ones "
                f"are kept). {self._divergence_advice()}"
            )
            raise NonFiniteTrainingError(self._diverged)
        checkpoint["simlearn_config"] = self.config
