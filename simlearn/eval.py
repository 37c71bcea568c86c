"""Evaluate a checkpoint: ``simlearn-eval ckpt_path=PATH [data=NAME ...]`` writes the same files as training."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig

from simlearn.build import build_trainer
from simlearn.checkpoints import restore
from simlearn.console import print_metrics
from simlearn.evaluation.label_free import collapse_warning
from simlearn.reports.outputs import write_splits, write_test_outputs

__all__ = ["evaluate"]

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Rebuild the checkpoint's model, test it on the data (the checkpoint's, or ``data=`` from the command line)."""
    restored = restore(cfg)
    run_cfg, datamodule, model = restored.config, restored.datamodule, restored.model
    trainer = build_trainer(run_cfg, callbacks=[RichProgressBar()], loggers=[])
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {f"test/{k}": float(v) for k, v in model.metrics["test"].items()}
    output_dir = Path(cfg.paths.output_dir)
    if not trainer.is_global_zero:  # other DDP ranks hold the same gathered results; one process writes files
        return metrics
    write_splits(output_dir, datamodule)
    metrics = write_test_outputs(run_cfg, trainer, model, datamodule, output_dir, metrics)
    print_metrics(metrics, title=f"simlearn-eval · {cfg.ckpt_path}")
    collapsed = collapse_warning(metrics)
    if collapsed:
        log.warning(collapsed)
    return metrics
