"""Experiment loggers that never block a run."""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from simlearn.errors import UserError

log = logging.getLogger(__name__)


#: WANDB_MODE values under which wandb never contacts a server, so it needs no credentials.
_OFFLINE_MODES = ("offline", "disabled", "dryrun")
#: Seconds wandb.init may spend reaching the server before the run falls back to offline (wandb's own default is
#: 90, and its login checks add up to 10 more: a run without network stalled almost two minutes, then failed).
DEFAULT_INIT_TIMEOUT = 20.0


def wandb_has_credentials() -> bool:
    """Whether wandb has credentials for the server it is configured for, found as wandb itself finds them.

    The host is wandb's configured one (WANDB_BASE_URL, ``wandb login --host``, else wandb's default, which depends on
    its version); the credentials are looked up by wandb's own code (WANDB_API_KEY, an identity token file, the netrc
    entry ``wandb login`` wrote, an api_key in its settings files), so whatever ``wandb.init`` would use counts.
    It never prompts and makes no network request. Credentials that wandb would reject (a malformed key, an invalid
    server address) count as none, with a warning saying why.
    """
    try:
        from wandb.sdk.lib import wbauth
    except ImportError:  # wandb before its wbauth module: its older lookup
        return _legacy_wandb_api_key()
    from wandb.errors import Error as WandbError
    from wandb.sdk import wandb_setup

    try:
        host = wandb_setup.singleton().settings.base_url
        # what wandb.Api() and wandb.login(prompt=False) do, minus the prompt, the verification request and the
        # change to the session
        auth = wbauth.authenticate_session(host=host, source="simlearn", prompt=False, update_session=False)
    except (WandbError, ValueError) as error:  # AuthenticationError, pydantic's ValidationError
        log.warning("wandb: unusable credentials or server address (%s)", (str(error).splitlines() or [error])[0])
        return False
    return auth is not None


def _legacy_wandb_api_key() -> bool:
    try:
        import wandb
        from wandb.sdk.lib import apikey

        return bool(apikey.api_key(settings=wandb.setup().settings))
    except Exception as error:  # any failure of an old wandb's lookup means: no usable key
        log.warning("wandb: could not look up credentials (%s)", error)
        return False


def sweep_group() -> str | None:
    """In a Hydra multirun: ``<job name>-<sweep dir name>``, shared by every job of the sweep."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra_cfg = HydraConfig.get()
    return f"{hydra_cfg.job.name}-{os.path.basename(os.path.normpath(hydra_cfg.sweep.dir))}"


#: Why an online wandb run could not be started in this process, once one could not: the later jobs of an
#: in-process Hydra sweep then log offline at once instead of each waiting init_timeout for the same server.
_online_failure: str | None = None


class FallbackWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` whose run falls back to offline when an online one cannot be started.

    ``wandb.init`` gives up after its ``init_timeout`` when the server cannot be reached (no network, a firewall, a
    server that does not answer) or fails at once when it rejects the key; the run then starts offline, with one
    warning that says why and how to upload it later, instead of a traceback before anything was trained. Later
    runs in the same process (the jobs of a sequential sweep) start offline at once.
    """

    @property
    def experiment(self) -> Any:
        import wandb

        global _online_failure
        if self._experiment is None and self._wandb_init.get("mode") != "offline" and _online_failure is not None:
            self._fall_back(f"an earlier run in this process could not start online: {_online_failure}")
        try:
            return super().experiment
        except (wandb.errors.Error, TimeoutError) as error:
            if self._experiment is not None or self._wandb_init.get("mode") == "offline":
                raise
            _online_failure = (str(error).splitlines() or [type(error).__name__])[0][:300]
            self._fall_back(_online_failure)
            return super().experiment

    def _fall_back(self, reason: str) -> None:
        timeout = getattr(self._wandb_init.get("settings"), "init_timeout", None)
        limit = f"init_timeout={timeout:g} s, " if timeout is not None else ""
        log.warning(
            "wandb: could not start an online run (%s); logging offline under %s/wandb instead, upload it later "
            "with `wandb sync %s/wandb/offline-run-*` (%sset by logger.wandb.init_timeout or WANDB_INIT_TIMEOUT)",
            reason,
            self._save_dir,
            self._save_dir,
            limit,
        )
        # the mode is passed to wandb.init itself: WANDB_MODE would be ignored once wandb has read its settings
        self._wandb_init["mode"] = "offline"


def wandb_logger(
    offline: bool = False,
    save_dir: str = ".",
    group: str | None = None,
    init_timeout: float | str | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """Lightning's ``WandbLogger`` that never prompts and never stalls a run.

    Without credentials it logs offline. With them, ``wandb.init`` may take ``init_timeout`` seconds (None:
    WANDB_INIT_TIMEOUT, else :data:`DEFAULT_INIT_TIMEOUT`) to reach the server; after that, or when the server
    rejects the key, the run logs offline (:class:`FallbackWandbLogger`). Jobs of one Hydra sweep share a wandb
    group (the sweep's name) unless ``group`` is given.
    """
    import wandb

    group = group or sweep_group()
    given = (os.environ.get("WANDB_INIT_TIMEOUT") or DEFAULT_INIT_TIMEOUT) if init_timeout is None else init_timeout
    try:
        init_timeout = float(given)
    except (TypeError, ValueError):
        init_timeout = float("nan")
    if not init_timeout > 0:
        raise UserError(
            f"logger.wandb.init_timeout (or WANDB_INIT_TIMEOUT) must be a number of seconds > 0, got {given!r}; "
            f"e.g. logger.wandb.init_timeout={DEFAULT_INIT_TIMEOUT:g}."
        )
    settings = kwargs.pop("settings", None) or {}
    settings = wandb.Settings(**dict(settings)) if isinstance(settings, Mapping) else settings  # a config's dict
    settings.init_timeout = init_timeout
    explicit_mode = os.environ.get("WANDB_MODE") in _OFFLINE_MODES
    mode = kwargs.pop("mode", None)
    if offline:
        mode = "offline"
    elif mode is None and not explicit_mode and not wandb_has_credentials():
        mode = "offline"
        log.warning(
            "wandb: no credentials (WANDB_API_KEY or `wandb login`), logging offline under %s/wandb; "
            "upload later with `wandb sync %s/wandb/offline-run-*`",
            save_dir,
            save_dir,
        )
    if mode is not None:
        # passed to wandb.init itself rather than through WANDB_MODE (what Lightning's offline=True sets): wandb reads
        # the environment once per process, and it has already done so to look up the credentials
        kwargs["mode"] = mode
    os.makedirs(save_dir, exist_ok=True)
    return FallbackWandbLogger(offline=offline, save_dir=save_dir, group=group, settings=settings, **kwargs)


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


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` that keeps the curves of a resumed run.

    Lightning deletes an existing ``metrics.csv`` when the logger starts, so resuming a run (after ``kill -9``, a
    preemption or a time limit) lost every curve from before. Here the rows logged up to the resumed checkpoint's
    step are kept and new rows are appended; rows from after it (the part of the run that was lost and is redone)
    are dropped, so no step appears twice.
    """

    def resume_at_step(self, step: int) -> None:
        """Keep the rows of ``metrics.csv`` up to ``step``; called before training resumes from a checkpoint."""
        self._resume_step = step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingExperimentWriter(self.log_dir, getattr(self, "_resume_step", None))
        return self._experiment


class _KeepingExperimentWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            keys, rows = list(reader.fieldnames or []), list(reader)
        if self.resume_step is None:
            # a fresh run in a dir with old curves cannot happen (the run dir is claimed), but never delete them
            path.rename(path.with_name(f"metrics.before-{int(time.time())}.csv"))
            return
        kept = [row for row in rows if row.get("step", "") == "" or int(float(row["step"])) <= self.resume_step]
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(kept)
        self.metrics_keys = keys
        dropped = len(rows) - len(kept)
        log.info(
            "csv: kept %d rows of %s up to step %d, dropped %d later ones", len(kept), path, self.resume_step, dropped
        )
