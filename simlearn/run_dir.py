"""A run dir belongs to one run: claimed before anything is written, locked while the run lives.

Every command writes its files into a run dir (``hydra.run.dir``). Before it writes anything there it *claims* the
dir: it checks that the dir is writable, takes an exclusive lock (``.simlearn.lock``, removed when the run ends; a
second process that wants the same dir stops with one line), and refuses a dir that holds the results of another
run unless it is resuming that run. Only then are Hydra's copies of the config (``.hydra/``) and the run's log file
written, so a refused run leaves the dir as it found it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from simlearn.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".simlearn.lock"
#: Files a finished (or started) run leaves in its dir; a new run must never write over them.
RESULT_FILES = (
    "config.yaml",
    "metrics.json",
    "embeddings.npz",
    "similarity.json",
    "search.json",
    # simlearn-organise's
    "organise.json",
    "clusters.csv",
    "clusters_summary.csv",
    "duplicates.csv",
    "outliers.csv",
    "leaks.csv",
)
#: Folders of results: any file in them is a result (training's checkpoints, organise's contact sheets).
RESULT_FOLDERS = {"checkpoints": "*.ckpt", "sheets": "*.png"}


def process_rank() -> int:
    """This process's global rank as the launcher says (0 outside DDP): only rank 0 claims and writes the run dir.

    Lightning's DDP launcher starts ranks > 0 as copies of the command line with ``LOCAL_RANK`` set; SLURM sets
    ``SLURM_PROCID`` for every task.
    """
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def existing_results(output_dir: Path) -> list[str]:
    """The results of a run already in ``output_dir`` (relative names), empty for a fresh dir."""
    found = [name for name in RESULT_FILES if (output_dir / name).is_file()]
    for name, pattern in RESULT_FOLDERS.items():
        folder = output_dir / name
        if folder.is_dir():
            found += sorted(f"{name}/{p.name}" for p in folder.glob(pattern))
    return found


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and write a probe file into it: a read-only dir fails here, before any work,
    instead of after an epoch of training (Lightning turns a failed checkpoint write into a misleading error)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".simlearn-write-probe-"):
            pass
    except OSError as error:
        raise UserError(
            f"{what} {str(folder)!r} is not writable ({error.strerror or error}); simlearn writes its results there "
            f"(and a training run its checkpoints). Make it writable, or choose another hydra.run.dir=DIR."
        ) from error


class RunLogHandler(logging.FileHandler):
    """Hydra's per-run log file (``<run dir>/<job>.log``), opened only once the run has claimed its dir.

    Until :func:`claim_run_dir` succeeds, records are held in memory: a run that is refused (dir in use, results of
    another run, read-only) never appends to another run's log, and a read-only dir gives simlearn's one-line error
    instead of a logging traceback from Hydra.
    """

    MAX_PENDING = 10_000

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None) -> None:
        # always delayed (no ``delay`` argument): the file is opened by open_log, never before the claim
        super().__init__(filename, mode=mode, encoding=encoding, delay=True)
        self.pending: list[logging.LogRecord] | None = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.pending is not None:
            if len(self.pending) < self.MAX_PENDING:
                self.pending.append(record)
            return
        super().emit(record)

    def open_log(self) -> None:
        """Start writing to the file, beginning with the records held so far."""
        pending, self.pending = self.pending or [], None
        if self.stream is None:
            with contextlib.suppress(OSError):  # unwritable: the run's own check has said so
                self.stream = self._open()
        for record in pending:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        # an unwritable log file must never print a traceback per record; the run's own check says what is wrong
        pass


def _run_log_handlers() -> list[RunLogHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, RunLogHandler)]


def open_run_log() -> None:
    """Start writing the run's log file in a process whose run dir is claimed already (by the process that started
    it: a rank of DDP, or of a spawn/fork strategy)."""
    for handler in _run_log_handlers():
        handler.open_log()


def _hydra_files(output_dir: Path, resume: bool) -> None:
    """Hydra's copies of the config (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``), written by simlearn
    after the claim instead of by Hydra before it (``hydra.output_subdir`` is null). A resumed run keeps the files of
    its start and records each resume's overrides in ``.hydra/resumes.yaml``."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    folder = output_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    overrides = list(hydra_cfg.overrides.task)
    if resume and (folder / "overrides.yaml").is_file():
        resumes_file = folder / "resumes.yaml"
        resumes = (OmegaConf.to_container(OmegaConf.load(resumes_file)) if resumes_file.is_file() else None) or []
        resumes.append({"time": _dt.datetime.now().isoformat(timespec="seconds"), "overrides": overrides})
        OmegaConf.save(OmegaConf.create(resumes), resumes_file)
        return
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(overrides), folder / "overrides.yaml")


def save_unresolved_config(output_dir: Path, cfg: Any) -> None:
    """``.hydra/config.yaml``: the run's config with its interpolations kept, what a resume starts from."""
    folder = output_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml", resolve=False)


@contextlib.contextmanager
def claim_run_dir(
    output_dir: str | os.PathLike, task: str, allow_results: bool = False, hint: str | None = None
) -> Iterator[Path]:
    """Own ``output_dir`` for the duration of the ``with`` block (see the module docstring).

    ``allow_results`` lets a run that continues the dir's own run (a resume) in; otherwise existing results are
    refused with ``hint`` (what to do instead) in the message. On DDP ranks > 0 nothing is checked or locked: rank 0
    owns the dir for the whole run.
    """
    output_dir = Path(output_dir)
    if process_rank() != 0:  # each rank logs to its own file (Lightning names the job train_ddp_process_<rank>)
        open_run_log()
        yield output_dir
        return
    check_writable(output_dir, "the run dir")
    lock_path = output_dir / LOCK_NAME
    lock_file = _lock(lock_path, output_dir)
    try:
        if not allow_results:
            found = existing_results(output_dir)
            if found:
                raise UserError(
                    f"the run dir {str(output_dir)!r} already holds the results of another run ({_listed(found)}); "
                    f"simlearn never writes over them. {hint or 'Choose another hydra.run.dir=DIR.'}"
                )
        lock_file.seek(0)
        lock_file.truncate()
        since = _dt.datetime.now().isoformat(sep=" ", timespec="seconds")
        lock_file.write(f"simlearn-{task}, pid {os.getpid()} on {socket.gethostname()}, since {since}")
        lock_file.flush()
        _hydra_files(output_dir, resume=allow_results)
        open_run_log()
        yield output_dir
    finally:
        # removed while still locked, and only while the path is still this lock's file: a lock file that another
        # process put there is never deleted
        with contextlib.suppress(OSError):
            if _is_file_at(lock_file, lock_path):
                lock_path.unlink()
        lock_file.close()  # releases the lock


def _listed(names: list[str], shown: int = 6) -> str:
    """The first ``shown`` names and how many more: one line even for a dir of many contact sheets."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _is_file_at(handle: IO[str], path: Path) -> bool:
    """Whether ``path`` still names the file ``handle`` has open."""
    try:
        here, there = os.fstat(handle.fileno()), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _lock(lock_path: Path, output_dir: Path) -> IO[str]:
    """The run dir's lock file, opened (created if needed) and exclusively locked; a UserError when another process
    holds it. A run removes its lock file when it ends: a process that opened that file just before and locked it
    after holds a lock on a file no longer in the dir, so it opens the one at the path again."""
    while True:
        lock_file: IO[str] = open(lock_path, "a+")  # noqa: SIM115 (held open for the whole run)
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "another process"
            lock_file.close()
            raise UserError(
                f"the run dir {str(output_dir)!r} is in use by another simlearn run ({holder}); two runs must never "
                f"write into one dir. Wait for it to finish, or choose another hydra.run.dir=DIR."
            ) from error
        if _is_file_at(lock_file, lock_path):
            return lock_file
        lock_file.close()
