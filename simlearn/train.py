"""Training: ``python train.py [overrides]`` (or ``simlearn-train``) composes configs/train.yaml and runs it."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from omegaconf import DictConfig, OmegaConf

from simlearn.build import build_datamodule, build_list, build_model, build_trainer, check_config, write_test_outputs
from simlearn.cli import exit_on_user_error, print_metrics
from simlearn.config import config_dir
from simlearn.errors import UserError
from simlearn.loggers import finish_wandb

log = logging.getLogger(__name__)


def resolve_resume(output_dir: Path, ckpt_path: str | None) -> str | None:
    """The checkpoint to resume from, refusing to train over existing checkpoints otherwise.

    ``ckpt_path=last`` resumes from this run dir's ``checkpoints/last.ckpt`` when there is one and starts fresh when
    there is none, which is what a requeued or restarted job wants.
    """
    checkpoints = output_dir / "checkpoints"
    if ckpt_path == "last":
        last = checkpoints / "last.ckpt"
        if last.is_file():
            return str(last)
        ckpt_path = None
    existing = sorted(p.name for p in checkpoints.glob("*.ckpt"))
    if existing and not ckpt_path:
        raise UserError(
            f"the run dir {output_dir} already holds checkpoints {existing}; training again would overwrite "
            f"them. Choose another hydra.run.dir, or resume with ckpt_path=last (or a path to a .ckpt)."
        )
    if ckpt_path and not Path(ckpt_path).is_file():
        raise UserError(f"ckpt_path={ckpt_path!r} is not a file; give the path of a .ckpt to resume from, or 'last'.")
    return ckpt_path


def training_time(trainer: pl.Trainer, callbacks: list) -> dict[str, float]:
    """``train/wall_s`` (the training loop's wall time, by the config's Timer callback) and ``train/epochs`` run."""
    timer = next((c for c in callbacks if isinstance(c, Timer)), None)
    out = {"train/epochs": float(trainer.current_epoch)}
    if timer is not None and timer.start_time("train") is not None:
        out["train/wall_s"] = float(timer.time_elapsed("train"))
    return out


def train(cfg: DictConfig) -> dict[str, float]:
    """Train, test the best checkpoint, write the run's files; return the flat metric dict (val/…, test/…)."""
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_resume(output_dir, cfg.get("ckpt_path"))
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg.data)
    model = build_model(cfg, datamodule)
    callbacks = build_list(cfg.get("callbacks"))
    loggers = build_list(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks, loggers)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = {f"val/{k}": float(v) for k, v in model.metrics.get("val", {}).items()}
        metrics.update(training_time(trainer, callbacks))
        checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
        best_path = checkpoint.best_model_path if checkpoint is not None else ""
        if checkpoint is not None and checkpoint.best_model_score is not None:
            metrics[checkpoint.monitor.replace("/", "/best_", 1)] = float(checkpoint.best_model_score)
        trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
        metrics.update({f"test/{k}": float(v) for k, v in model.metrics["test"].items()})
        if not trainer.is_global_zero:  # other DDP ranks hold the same gathered results; one process writes files
            return metrics
        metrics = write_test_outputs(cfg, trainer, model, datamodule, output_dir, metrics)
    finally:
        finish_wandb(loggers)
    print_metrics(metrics, title=f"simlearn · {output_dir}")
    if best_path:
        log.info("best checkpoint: %s", best_path)
    return metrics


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    optimized = cfg.get("optimized_metric")
    if optimized and optimized not in metrics:
        raise UserError(f"optimized_metric={optimized!r} is not a metric of this run; valid: {sorted(metrics)}.")
    return metrics[optimized] if optimized else None


if __name__ == "__main__":
    main()
