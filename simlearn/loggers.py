"""Experiment loggers that never block a run."""

from __future__ import annotations

import logging
import netrc
import os
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


def wandb_has_credentials() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` stores it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def sweep_group() -> str | None:
    """In a Hydra multirun: ``<job name>-<sweep dir name>``, shared by every job of the sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra_cfg = HydraConfig.get()
    return f"{hydra_cfg.job.name}-{os.path.basename(os.path.normpath(hydra_cfg.sweep.dir))}"


def wandb_logger(offline: bool = False, save_dir: str = ".", group: str | None = None, **kwargs) -> WandbLogger:
    """Lightning's ``WandbLogger``, switched to offline mode when no credentials exist so it never prompts.

    Jobs of one Hydra sweep share a wandb group (the sweep's name) unless ``group`` is given.
    """
    group = group or sweep_group()
    explicit_mode = os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun")
    if not offline and not explicit_mode and not wandb_has_credentials():
        offline = True
        log.warning(
            "wandb: no credentials (WANDB_API_KEY or `wandb login`), logging offline under %s/wandb; "
            "upload later with `wandb sync %s/wandb/offline-run-*`",
            save_dir,
            save_dir,
        )
    os.makedirs(save_dir, exist_ok=True)
    return WandbLogger(offline=offline, save_dir=save_dir, group=group, **kwargs)


def finish_wandb(loggers: list) -> None:
    """Close wandb runs (so multiruns start fresh ones) and say how to upload offline runs."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger) or logger._experiment is None:
            continue
        run_dir = os.path.dirname(logger.experiment.dir)
        offline = logger.experiment.settings.mode in ("offline", "dryrun")
        logger.experiment.finish()
        if offline:
            log.warning("wandb: this run was logged offline; upload it with `wandb sync %s`", run_dir)
