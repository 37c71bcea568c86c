"""Training: ``python train.py [overrides]`` (or ``simlearn-train``) composes configs/train.yaml and runs it."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import lightning.pytorch as pl
import torch
import torch.multiprocessing as mp
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import configure_log, setup_globals
from hydra.errors import InstantiationException
from lightning.fabric.utilities import rank_zero as fabric_rank_zero
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.utilities import rank_zero as pl_rank_zero
from omegaconf import DictConfig, OmegaConf, open_dict

from simlearn.build import Run, build_run, check_config, run_output_dir, spawn_launcher
from simlearn.config import config_dir
from simlearn.console import print_metrics, quiet_console
from simlearn.errors import UserError, find_user_error
from simlearn.evaluation.label_free import collapse_warning
from simlearn.loggers import finish_wandb
from simlearn.reports.outputs import write_splits, write_test_outputs
from simlearn.run_dir import (
    check_writable,
    claim_run_dir,
    existing_results,
    open_run_log,
    process_rank,
    save_unresolved_config,
)

log = logging.getLogger(__name__)


#: Config groups that define what a run trains; a resume cannot swap them (the checkpoint would not fit).
RUN_DEFINING_GROUPS = ("data", "augment", "backbone", "head", "loss", "experiment", "evaluation", "hparams_search")
#: Keys under which a change alters the model's shapes, so the checkpoint's weights would no longer load.
MODEL_SHAPE_KEYS = ("backbone", "head")


@dataclass
class Resume:
    """Where a run resumes from: the checkpoint, and the run dir whose saved config it continues (None: a new run)."""

    ckpt_path: str | None = None
    source_dir: Path | None = None


def resolve_resume(output_dir: Path, ckpt_path: str | None) -> Resume:
    """The checkpoint to resume from and the run it belongs to.

    ``ckpt_path=last`` resumes from this run dir's ``checkpoints/last.ckpt`` when there is one and starts fresh when
    there is none, which is what a requeued or restarted job wants. A path resumes from that file; the run it
    continues is the run dir that holds it (``<run>/checkpoints/<file>.ckpt``).
    """
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        return Resume(str(last), output_dir) if last.is_file() else Resume()
    if not ckpt_path:
        return Resume()
    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"ckpt_path={ckpt_path!r} is not a file; give the path of a .ckpt to resume from, or 'last'.")
    return Resume(str(path), path.resolve().parent.parent)


def command_line_overrides() -> list[str]:
    """The overrides of this command line (``key=value`` …), as Hydra parsed them; empty outside Hydra."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def resumed_config(cfg: DictConfig, source_dir: Path, overrides: Sequence[str]) -> DictConfig:
    """The config of the run in ``source_dir`` (its ``.hydra/config.yaml``) with this command line's explicit
    overrides on top, so that a resume continues the run that was instead of a new default one."""
    saved_file = source_dir / ".hydra" / "config.yaml"
    if not saved_file.is_file():
        log.warning(
            "resuming: %s has no saved config (.hydra/config.yaml, written by simlearn since 0.1); "
            "continuing with this command line's config",
            source_dir,
        )
        return cfg
    saved = OmegaConf.load(saved_file)
    applied = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key == "ckpt_path" or key.split(".")[0].split("/")[0] == "hydra":
            continue
        root = key.split(".")[0]
        is_group = (config_dir() / key).is_dir()
        if (is_group and key in RUN_DEFINING_GROUPS) or (not is_group and root in MODEL_SHAPE_KEYS):
            raise UserError(
                f"{override.input_line} would change what the resumed run trains; a resume continues the run's saved "
                f"config ({saved_file}). Drop {override.input_line}, or start a new run in another hydra.run.dir=DIR "
                f"(from scratch, or ckpt_path=... to start from these weights)."
            )
        if not is_group and root in ("optimizer", "scheduler"):
            raise UserError(
                f"{override.input_line} would have no effect: a resume restores the optimiser and scheduler state "
                f"(learning rate included) from the checkpoint. Drop it, or start a new run from these weights in "
                f"another hydra.run.dir=DIR."
            )
        with open_dict(saved):
            if is_group:  # trainer / logger / callbacks: the option as this command line composed it
                saved[key] = cfg[key]
            elif override.is_delete():
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(saved, parent) if parent else saved
                if node is not None and leaf in node:
                    del node[leaf]
            else:
                OmegaConf.update(saved, key, override.value(), merge=False, force_add=True)
        applied.append(override.input_line)
    with open_dict(saved):
        saved.paths = cfg.paths  # the run dir is where the run is now (it may have been moved or copied)
        saved.ckpt_path = cfg.get("ckpt_path")
    log.info(
        "resuming the run of %s with its saved config (%s); overrides on top: %s",
        source_dir,
        saved_file,
        " ".join(applied) or "none",
    )
    return saved


def checkpoint_step(ckpt_path: str) -> int:
    """The global step a checkpoint was saved at (read lazily: the weights are not loaded)."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    return int(checkpoint.get("global_step", 0))


def training_time(trainer: pl.Trainer, callbacks: list) -> dict[str, float]:
    """``train/wall_s`` (the training loop's wall time, by the config's Timer callback) and ``train/epochs`` run."""
    timer = next((c for c in callbacks if isinstance(c, Timer)), None)
    out = {"train/epochs": float(trainer.current_epoch)}
    if timer is not None and timer.start_time("train") is not None:
        out["train/wall_s"] = float(timer.time_elapsed("train"))
    return out


def train(cfg: DictConfig) -> dict[str, float]:
    """Train, test the best checkpoint, write the run's files; return the flat metric dict (val/…, test/…).
    :func:`train_run` does it and returns the run's objects with the metrics."""
    return train_run(cfg).metrics


def train_run(cfg: DictConfig, overrides: Sequence[str] | None = None) -> Run:
    """Train, test the best checkpoint, write the run's files; return the :class:`~simlearn.build.Run`: the config
    with every placeholder filled, the datamodule, model, trainer, and the flat metric dict (val/…, test/…).

    The run dir is claimed first (:func:`~simlearn.run_dir.claim_run_dir`): one run at a time, never over another
    run's results; a resume continues the run's saved config. ``train=false`` skips the training and tests the model
    as built (a pretrained backbone's zero-shot baseline), writing the same files. ``overrides``: the ``key=value``
    overrides a resume applies on top of the run's saved config (default: this command line's).

    Under a strategy that starts its ranks from this process (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``) the
    whole run happens in those processes, rank 0 writing the run's files as under ``ddp``; this process keeps the
    run dir claimed, then prints the metrics and returns them, as rank 0 computed them: its ``Run`` holds the config,
    ``metrics`` and ``best_path``, and no datamodule, model or trainer (they lived in the launched processes).
    """
    if not cfg.get("train", True) and cfg.get("ckpt_path"):
        raise UserError(
            f"train=false tests the model as the config builds it (no training), so it takes no "
            f"ckpt_path={cfg.ckpt_path}; to test a checkpoint run simlearn-eval ckpt_path={cfg.ckpt_path}."
        )
    output_dir = run_output_dir(cfg)
    resume = resolve_resume(output_dir, cfg.get("ckpt_path"))
    continues_this_dir = resume.source_dir is not None and resume.source_dir.resolve() == output_dir.resolve()
    # a requeued job with ckpt_path=last that died before its first checkpoint may start again over its config.yaml
    restart = cfg.get("ckpt_path") == "last" and existing_results(output_dir) == ["config.yaml"]
    if resume.source_dir is not None:  # reads only: a refused resume must leave the dir as it was
        cfg = resumed_config(cfg, resume.source_dir, command_line_overrides() if overrides is None else overrides)
    with claim_run_dir(
        output_dir,
        "train",
        allow_results=continues_this_dir or restart,
        # the resume hint only where there is a training to continue (not in another command's dir, e.g. organise's)
        hint="To continue its training, add ckpt_path=last; otherwise choose another hydra.run.dir=DIR."
        if (output_dir / "checkpoints" / "last.ckpt").is_file()
        else None,
    ):
        check_config(cfg)
        launcher = spawn_launcher(cfg)
        if launcher is None:
            run = _train(cfg, output_dir, resume.ckpt_path)
            outcome = _Outcome(run.metrics, run.best_path, reports=run.trainer.is_global_zero)
        else:
            hydra_cfg = HydraConfig.instance().cfg if HydraConfig.initialized() else None
            launched = _LaunchedRun(cfg, output_dir, resume.ckpt_path, hydra_cfg)
            try:
                outcome = launcher.launch(launched, trainer=None)  # rank 0's return value (the others' are dropped)
            except Exception:
                launched.raise_error()  # what rank 0 stopped at, rather than the failure of a rank that lost its peer
                raise
            finally:
                launched.close()
            launched.raise_error()
            run = Run(cfg, output_dir, None, None, None, [], [], outcome.metrics, outcome.best_path)
        if outcome.reports:
            print_metrics(outcome.metrics, title=f"simlearn · {output_dir}")
            collapsed = collapse_warning(outcome.metrics)
            if collapsed:  # last, under the table: a useless model must not pass for a trained one
                log.warning(collapsed)
            if outcome.best_path:
                log.info("best checkpoint: %s", outcome.best_path)
        return run


class _Outcome(NamedTuple):
    """What one process of a run ends with: the metrics, the best checkpoint ("" when none), and whether it reports
    them (the process of rank 0, or the one that launched the ranks)."""

    metrics: dict[str, float]
    best_path: str
    reports: bool


class _LaunchedRun:
    """One rank of a run whose strategy starts its processes from the launching one; its launcher calls this in each.

    An object rather than a function with arguments: the launcher walks its arguments (for tensors to stop sharing),
    which would resolve the config's interpolations, and ``${hydra:...}`` resolves only once this process has the
    launching process's Hydra state. The launching process reports what rank 0 returns (:func:`train`), or its
    error. Each rank logs as a rank of ``trainer=ddp`` does: rank 0 into the run's log, each other rank into
    ``<job>_ddp_process_<rank>.log``.
    """

    def __init__(self, cfg: DictConfig, output_dir: Path, ckpt_path: str | None, hydra_cfg: DictConfig | None):
        self.cfg, self.output_dir, self.ckpt_path, self.hydra_cfg = cfg, output_dir, ckpt_path, hydra_cfg
        # rank 0's mistake (a UserError, a config that does not build), passed here as itself for the one-line message
        # of a single process; also when another rank fails next, having lost its peer (gloo: "Connection closed by
        # peer"), which is the failure the launcher itself would report, with its traceback
        self.errors = mp.get_context("spawn").SimpleQueue()
        self.error: BaseException | None = None

    def raise_error(self) -> None:
        """In the launching process, after the ranks ended: raise rank 0's error, if it stopped at one."""
        self.close()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """In the launching process, after the ranks ended: keep rank 0's error, if any, and close the queue's pipes
        (a notebook that runs many times would otherwise keep two file descriptors per run)."""
        if self.errors is not None:
            if not self.errors.empty():
                self.error = self.errors.get()
            self.errors.close()
            self.errors = None

    def __call__(self) -> _Outcome | None:
        if self.hydra_cfg is not None:  # a spawned process starts with none of the launching process's Hydra state
            hydra_cfg = copy.deepcopy(self.hydra_cfg)
            OmegaConf.set_readonly(hydra_cfg.hydra, False)  # HydraConfig keeps it read-only
            rank = process_rank()
            if rank:
                hydra_cfg.hydra.job.name = f"{hydra_cfg.hydra.job.name}_ddp_process_{rank}"
            setup_globals()  # Hydra's resolvers (${hydra:...}, ${now:...})
            HydraConfig.instance().set_config(hydra_cfg)
            configure_log(hydra_cfg.hydra.job_logging, hydra_cfg.hydra.verbose)
            # imported (unpickling this object) before logging was configured, Lightning gave its loggers their own
            # console handler: as in the launching process, each message once, no tips (simlearn.console)
            quiet_console()
            open_run_log()  # the launching process claimed the run dir
        # Lightning read its rank-zero rank from the environment when this process imported it, before the launcher
        # set LOCAL_RANK (spawn) or while it was still the launching process's (fork): every rank would print the
        # Trainer's rank-zero lines ("GPU available: …") until the strategy set it up
        for module in (pl_rank_zero, fabric_rank_zero):
            module.rank_zero_only.rank = process_rank()
        try:
            run = _train(self.cfg, self.output_dir, self.ckpt_path, launched=True)
            return _Outcome(run.metrics, run.best_path, reports=run.trainer.is_global_zero)
        except (UserError, InstantiationException) as error:
            if process_rank() == 0:
                # the chain of causes does not cross the process boundary: the UserError inside, if any
                self.errors.put(find_user_error(error) or error)
            return None


def _train(cfg: DictConfig, output_dir: Path, ckpt_path: str | None, launched: bool = False) -> Run:
    run = build_run(cfg, launched=launched)
    datamodule, model, trainer, callbacks, loggers = run.datamodule, run.model, run.trainer, run.callbacks, run.loggers
    if trainer.is_global_zero:
        for callback in callbacks:  # Lightning would fail only after an epoch, with a misleading FileNotFoundError
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                check_writable(Path(callback.dirpath), "the checkpoint folder")
        save_unresolved_config(output_dir, cfg)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
        write_splits(output_dir, datamodule)
    if ckpt_path:
        step = checkpoint_step(ckpt_path)
        for logger in loggers:  # curves logged before the checkpoint are kept, later ones are about to be redone
            if hasattr(logger, "resume_at_step"):
                logger.resume_at_step(step)
    try:
        if cfg.get("train", True):
            metrics, best_path = _fit(trainer, model, datamodule, callbacks, ckpt_path)
        else:  # train=false: the model as built (e.g. pretrained weights) is tested as it is, the zero-shot baseline
            metrics, best_path = {"train/epochs": 0.0}, ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
        metrics.update({f"test/{k}": float(v) for k, v in model.metrics["test"].items()})
        run.metrics, run.best_path = metrics, best_path
        if not trainer.is_global_zero:  # other DDP ranks hold the same gathered results; one process writes files
            return run
        run.metrics = write_test_outputs(cfg, trainer, model, datamodule, output_dir, metrics)
    finally:
        finish_wandb(loggers)
    return run


def _fit(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    callbacks: list,
    ckpt_path: str | None,
) -> tuple[dict[str, float], str]:
    """Train; return the validation metrics with the training time and the best validation score, and the path of
    the best checkpoint ("" when none was saved)."""
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {f"val/{k}": float(v) for k, v in model.metrics.get("val", {}).items()}
    metrics.update(training_time(trainer, callbacks))
    checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    if checkpoint is not None:
        best_key = checkpoint.monitor.replace("/", "/best_", 1)
        if checkpoint.best_model_score is not None:
            metrics[best_key] = float(checkpoint.best_model_score)
        elif trainer.fast_dev_run and checkpoint.monitor in metrics:
            # Lightning saves no checkpoint in a smoke run; its single validation is the best there is
            metrics[best_key] = metrics[checkpoint.monitor]
    return metrics, best_path


def optimized_value(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value of ``cfg.optimized_metric`` in a run's metrics (what a Hydra sweeper optimises), or None."""
    optimized = cfg.get("optimized_metric")
    if optimized and optimized.startswith("val/") and not any(k.startswith("val/") for k in metrics):
        # a run without validation (no val items or classes): its results are written; only a sweep needs the value
        log.warning(
            "optimized_metric=%s: this run has no validation metrics; nothing is returned to a sweeper.", optimized
        )
        return None
    if optimized and optimized not in metrics:
        raise UserError(
            f"optimized_metric={optimized!r} is not a metric of this run; valid: {sorted(metrics)}. "
            f"Set optimized_metric to one of them (e.g. optimized_metric=val/recall@1)."
        )
    return metrics[optimized] if optimized else None
