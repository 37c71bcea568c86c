"""Checkpoint files that are never left half-written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file, then rename it over the target.

    A process killed mid-save (SIGKILL, preemption, out of memory) leaves the previous ``last.ckpt`` intact instead
    of a truncated file that cannot be resumed from.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)


def relocate(value: Any, old: str, new: str) -> Any:
    """``value`` with every path string under the folder ``old`` moved under ``new`` (dicts and lists walked)."""
    if isinstance(value, str):
        return new + value[len(old) :] if value == old or value.startswith(old + os.sep) else value
    if isinstance(value, dict):
        return {relocate(key, old, new): relocate(item, old, new) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(relocate(item, old, new) for item in value)
    return value


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose state follows the run dir when it is moved or copied.

    Lightning stores absolute paths (best and last checkpoint, the kept top k) in its state and forgets all but the
    best path when a resumed run's ``dirpath`` differs, so resuming from a moved or copied run dir wrote
    ``last-v1.ckpt`` next to a stale ``last.ckpt``, kept two "best" files and lost the best score. Here the saved
    paths are re-based onto the current ``dirpath`` first: resuming behaves the same wherever the run dir is.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            state_dict = {**relocate(state_dict, str(old), str(self.dirpath)), "dirpath": self.dirpath}
        super().load_state_dict(state_dict)


class LatestBestCheckpoint(RunCheckpoint):
    """``ModelCheckpoint`` that keeps the newer checkpoint when its score ties the worst one kept.

    Small validation sets saturate metrics such as recall@1 early (every later epoch scores 1.0 too); Lightning
    then keeps the first epoch that reached the score, while the later ones have trained longer and rank better.
    """

    def check_monitor_top_k(self, trainer: pl.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and 0 < self.save_top_k <= len(self.best_k_models):
            worst_kept = self.best_k_models[self.kth_best_model_path]
            if bool(torch.as_tensor(current).cpu() == torch.as_tensor(worst_kept).cpu()):
                return trainer.strategy.reduce_boolean_decision(True)
        return super().check_monitor_top_k(trainer, current)
