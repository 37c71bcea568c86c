"""Evaluate a checkpoint: ``simlearn-eval ckpt_path=PATH [data=NAME ...]`` writes the same files as training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from simlearn.build import build_datamodule, build_model, build_trainer, check_config, resolved, run_reports
from simlearn.cli import exit_on_user_error, print_metrics
from simlearn.config import config_dir
from simlearn.errors import UserError
from simlearn.evaluation.artifacts import write_evaluation


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A simlearn checkpoint: Lightning's dict plus the ``simlearn_config`` its model was built from."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ckpt_path={str(path)!r} is not a file; give the path of a .ckpt written by training.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise UserError(f"ckpt_path={str(path)!r} is not a readable PyTorch checkpoint ({error}).") from error
    if not isinstance(checkpoint, dict) or "simlearn_config" not in checkpoint or "state_dict" not in checkpoint:
        raise UserError(
            f"ckpt_path={str(path)!r} was not written by simlearn (no 'simlearn_config' in it); "
            f"use a checkpoint from a run's checkpoints/ folder."
        )
    return checkpoint


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Rebuild the checkpoint's model, test it on the data (the checkpoint's, or ``data=`` from the command line)."""
    checkpoint = load_checkpoint(cfg.ckpt_path)
    run_cfg = OmegaConf.create(checkpoint["simlearn_config"])
    with open_dict(run_cfg):
        # data=NAME replaces the checkpoint's data config, +data.KEY=VALUE edits it; evaluation/trainer replace
        data = cfg.get("data")
        if data and "_target_" in data:
            run_cfg.data = resolved(cfg, "data")
            if cfg.get("evaluation") is None:
                run_cfg.evaluation.label_field = run_cfg.data.label_field
        elif data:
            run_cfg.data = OmegaConf.merge(run_cfg.data, resolved(cfg, "data"))
        for key in ("evaluation", "trainer"):
            if cfg.get(key) is not None:
                run_cfg[key] = resolved(cfg, key)
    check_config(run_cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(run_cfg.data)
    model = build_model(run_cfg, datamodule)
    model.load_state_dict(checkpoint["state_dict"])
    trainer = build_trainer(run_cfg, callbacks=[RichProgressBar()], loggers=[])
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {f"test/{k}": float(v) for k, v in model.metrics["test"].items()}
    output_dir = Path(cfg.paths.output_dir)
    if not trainer.is_global_zero:  # other DDP ranks hold the same gathered results; one process writes files
        return metrics
    metrics.update(run_reports(run_cfg, trainer, model, datamodule, output_dir))
    result = model.results["test"]
    write_evaluation(
        output_dir, result.embeddings, result.fields, datamodule.label_field, datamodule.class_names, metrics
    )
    print_metrics(metrics, title=f"simlearn-eval · {cfg.ckpt_path}")
    return metrics


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
