"""What the command-line entry points share: one Hydra wrapper, user errors as one line without a traceback."""

from __future__ import annotations

import contextlib
import difflib
import functools
import itertools
import logging
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import (
    CompactHydraException,
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
)
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue
from rich.console import Console
from rich.markup import escape

from simlearn.config import config_dir
from simlearn.console import quiet_console
from simlearn.errors import UserError
from simlearn.errors import find_user_error as _user_error
from simlearn.run_dir import claim_run_dir


def print_error(message: str) -> None:
    # escaped: a message quoting brackets (pip install 'simlearn[serve]', data.classes=[cat]) is text, not markup
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@dataclass
class FailedJob:
    """A job of this process's sweep that raised: what the sweep's last line names."""

    num: int
    overrides: str
    output_dir: Path
    log_file: Path
    error: BaseException
    user_error: bool


#: The jobs of the sweep in progress that ran in this process (Hydra's basic launcher), and those that failed.
_sweep_jobs: list[int] = []
_failed_jobs: list[FailedJob] = []


def _record_failed_job(error: BaseException, user_error: bool) -> None:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    _failed_jobs.append(
        FailedJob(
            num=int(hydra_cfg.job.num),
            overrides=" ".join(hydra_cfg.overrides.task),
            output_dir=output_dir,
            log_file=output_dir / f"{hydra_cfg.job.name}.log",
            error=error,
            user_error=user_error,
        )
    )


def exit_on_user_error(function: Callable[..., Any]) -> Callable[..., Any]:
    """Print a user mistake as one message on stderr and exit with status 2 instead of a traceback.

    In a multirun the job raises instead, so that Hydra records it as failed and the other jobs (and their files)
    carry on; the sweep ends with one line naming the failed jobs (:func:`run_sweep`).
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        multirun = in_multirun()
        if multirun:
            _sweep_jobs.append(int(HydraConfig.get().job.num))
        try:
            return function(*args, **kwargs)
        except (UserError, InstantiationException, MissingMandatoryValue) as error:
            user_error = _user_error(error)
            if user_error is not None:
                message = str(user_error)
            elif isinstance(error, MissingMandatoryValue):
                message = f"{error.full_key} is required; give it on the command line, e.g. {error.full_key}=PATH."
            else:
                message = f"could not build an object from the config:\n{error}"
            print_error(message)
            if multirun:
                logging.getLogger(function.__module__).error("error: %s", message.replace("\n", " "))
                _record_failed_job(error, user_error=True)
                raise
            sys.exit(2)
        except Exception as error:  # a bug: its traceback is printed at the sweep's end
            if multirun:
                _record_failed_job(error, user_error=False)
            raise

    return wrapper


#: What each command's required values look like, for the message that asks for them.
REQUIRED_EXAMPLES = {
    "ckpt_path": "outputs/train/runs/<run>/checkpoints/last.ckpt",
    "query": "photo.png",
    "gallery": "photos/",
}


def check_required(cfg: DictConfig) -> None:
    """Ask for every required value (``???`` in the config) the command line left out, in one message."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        examples = " ".join(f"{key}={REQUIRED_EXAMPLES.get(key, 'VALUE')}" for key in missing)
        plural = "s" if len(missing) > 1 else ""
        raise UserError(f"missing required value{plural} {', '.join(missing)}; e.g. {examples}")


def _override_key(override: str) -> str:
    """The key or group an override sets: ``+trainer.max_epochs=3`` -> ``trainer.max_epochs``, ``loss@x=y`` ->
    ``loss``."""
    return override.lstrip("~+").split("=", 1)[0].split("@", 1)[0]


def unknown_key_message(
    config_name: str, overrides: Sequence[str], error: BaseException, shown: Sequence[str] | None = None
) -> str | None:
    """One line for an override of a key the config does not have (Hydra says only "not in struct"): the key, the
    closest valid keys, and the ``+key=value`` form that adds a new key on purpose. ``shown``: the overrides as the
    user wrote them, one per entry of ``overrides`` (a sweep's ``key=1,2`` where ``overrides`` has ``key=1``)."""
    cause = error.__cause__ or error.__context__
    if not isinstance(cause, ConfigKeyError | ConfigAttributeError) or not cause.full_key:
        return None
    full_key = str(cause.full_key)
    position = next((i for i, o in enumerate(overrides) if _override_key(o) == full_key), None)
    override = overrides[position] if position is not None else full_key
    parent, _, leaf = full_key.rpartition(".")
    clean = [o for o in overrides if o != override]
    try:
        cfg = _compose(config_name, clean)
    except Exception:  # another mistake too: report this key alone
        cfg = None
    node = OmegaConf.select(cfg, parent) if cfg is not None and parent else cfg
    valid = sorted(str(k) for k in node) if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(leaf, valid, n=3, cutoff=0.6)
    where = f"{parent}" if parent else "the top level"
    if position is not None and shown is not None:
        override = shown[position]
    message = f"{override}: {full_key!r} is not a key of the {config_name} config"
    if close:
        prefix = f"{parent}." if parent else ""
        message += f"; did you mean {' or '.join(prefix + c for c in close)}?"
    elif valid:
        message += f"; the keys at {where} are {valid}."
    return message + f" To add a new key on purpose, write +{override.lstrip('+~')}."


def missing_option_message(
    config_name: str, overrides: Sequence[str], error: BaseException, shown: Sequence[str] | None = None
) -> str | None:
    """One line for a config group option that does not exist (``loss=tripplet``; Hydra prints 20 lines with its
    search path): the group, the closest options and the valid ones, for any group (``hydra/launcher`` too)."""
    if not isinstance(error, MissingConfigException) or not error.missing_cfg_file:
        return None
    group, _, option = str(error.missing_cfg_file).rpartition("/")
    if error.options is None:  # a list of options (postprocess=[aqe,qe]): Hydra names none, the folder does
        folder = config_dir() / group
        if not group or not folder.is_dir():
            return None
        error.options = sorted(path.stem for path in folder.glob("*.yaml"))
    position = next((i for i, o in enumerate(overrides) if _override_key(o) == group), None)
    # not on the command line: a config's own defaults list names it
    where = (shown or overrides)[position] if position is not None else f"the defaults of the {config_name} config"
    options = sorted(str(o) for o in error.options)
    if not options:
        return f"{where}: there is no config group {group!r} (no folder configs/{group}/)."
    close = difflib.get_close_matches(option, options, n=3, cutoff=0.6)
    message = f"{where}: {option!r} is not an option of the config group {group}"
    if close:
        message += f"; did you mean {' or '.join(f'{group}={c}' for c in close)}?"
    else:
        message += "."
    return message + f" Valid options: {', '.join(options)}."


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name=config_name):
        return compose(config_name=config_name, overrides=list(overrides))


#: The most configs a sweep's check composes (one per value of each swept key): about 0.1 s each.
MAX_CHECKED_RUNS = 64


def sweep_runs(overrides: Sequence[str]) -> list[list[str]]:
    """Single-run override lists that together use every value of every swept override of a multirun
    (``a=1,2 b=x,y`` -> ``[a=1 b=x], [a=2 b=x], [a=1 b=y]``): each key and each group option is checked once, not
    every combination. An override whose values cannot be listed (``interval(0.1, 1)`` of Optuna) is checked with
    none of them: only its key counts, checked by the keys of the other runs' configs."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    values: list[list[str]] = []
    for override, text in zip(parsed, overrides, strict=True):
        if not override.is_sweep_override():
            values.append([text])
            continue
        try:
            key = override.get_key_element()
            values.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        except Exception:  # not a list of values
            values.append([])
    first = [options[0] if options else None for options in values]
    runs = [first]
    for i, options in enumerate(values):
        runs += [[*first[:i], value, *first[i + 1 :]] for value in options[1:]]
    return [[o for o in run if o is not None] for run in itertools.islice(runs, MAX_CHECKED_RUNS)]


def _shown(run: Sequence[str], originals: Sequence[str]) -> list[str]:
    """For each override of a checked run, the override the user wrote (a sweep's ``key=1,2``)."""
    by_key = {_override_key(o): o for o in originals}
    return [by_key.get(_override_key(o), o) for o in run]


def quoted_override(key: str, value: str) -> str:
    """``key=value`` as typed into a POSIX shell so that Hydra reads ``value`` as one string: ``"key='value'"`` (the
    shell keeps what is inside the double quotes, Hydra the single), or where the value holds a ``'`` or a shell
    character, Hydra's double-quoted string (``\\`` and ``"`` escaped) quoted for the shell (:func:`shlex.quote`)."""
    if "'" not in value and not any(c in value for c in '"$`\\!'):
        return f"\"{key}='{value}'\""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return shlex.quote(f'{key}="{escaped}"')


def override_syntax_message(overrides: Sequence[str], multirun: bool = False) -> str | None:
    """One line for an override Hydra's grammar cannot read (``faiss_params=efSearch=128``: a second ``=``) or, outside
    a sweep, a value with a bare comma (``faiss_index=IVF4,Flat``, which Hydra reads as a sweep): what was wrong and
    the quoted form that gives the value as written. Hydra's own message is several lines and a link."""
    parser = OverridesParser.create()
    for text in overrides:
        key, _, value = text.partition("=")
        quoted = quoted_override(key, value)
        try:
            (parsed,) = parser.parse_overrides([text])
        except Exception as error:  # Hydra's OverrideParseException: the grammar's reason, then a link
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            return (
                f"{text!r} is not an override Hydra can read ({reason}); a value holding '=', ',', spaces or "
                f"brackets is quoted: {quoted}."
            )
        if (
            not multirun
            and parsed.is_sweep_override()
            and "," in value
            and not value.lstrip().startswith(("choice(", "range(", "interval(", "glob("))
        ):
            return (
                f"{text!r} has a bare comma, which Hydra reads as a sweep: quote it to give it as one value, "
                f"{quoted}; as a list, {key}=[{value}]; to sweep over its values, add -m."
            )
    return None


def check_overrides(config_name: str, argv: Sequence[str]) -> None:
    """Compose the config as Hydra will, before Hydra does, to turn an unknown key or a config group option that does
    not exist into one clear line (exit 2); in a sweep (``-m``) every value of every swept override.

    ``hydra.*`` settings and other flags than ``-m`` are left to Hydra (``--config-name`` changes the config), and
    any other composition error is reported by Hydra as usual.
    """
    if any(arg.startswith("-") and arg not in ("-m", "--multirun") for arg in argv):
        return
    overrides = [arg for arg in argv if "=" in arg and not arg.lstrip("+~").startswith("hydra.")]
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    # hydra.* settings too (hydra.run.dir=a,b): Hydra's grammar is the same for them
    message = override_syntax_message([arg for arg in argv if "=" in arg and not arg.startswith("-")], multirun)
    if message is not None:
        print_error(message)
        sys.exit(2)
    try:
        runs = sweep_runs(overrides) if multirun else [overrides]
    except Exception:  # not valid override syntax: Hydra says why
        return
    try:
        for run in runs:
            shown = _shown(run, overrides)
            try:
                _compose(config_name, run)
            except ConfigCompositionException as error:
                message = missing_option_message(config_name, run, error, shown) or unknown_key_message(
                    config_name, run, error, shown
                )
                if message is not None:
                    print_error(message)
                    sys.exit(2)
                return
            except Exception:  # Hydra itself reports every other mistake when it runs
                return
    finally:
        GlobalHydra.instance().clear()


@contextlib.contextmanager
def _hydra_raises() -> Iterator[None]:
    """Hydra's documented switch (``HYDRA_FULL_ERROR=1``) that makes it raise a failure instead of printing its
    traceback, for the duration of a sweep: :func:`run_sweep` then says in one line which jobs failed."""
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


def failed_jobs_message(failed: Sequence[FailedJob], num_jobs: int) -> str:
    """The sweep's last line: which jobs failed, with their overrides and where their logs are."""
    jobs = []
    for job in failed:
        where = f"log {job.log_file}" if job.log_file.is_file() else f"no log (dir {job.output_dir})"
        jobs.append(f"#{job.num} ({job.overrides}; {where})")
    total = f" of {num_jobs}" if num_jobs else ""
    plural = "s" if max(num_jobs, len(failed)) > 1 else ""
    return (
        f"{len(failed)}{total} job{plural} of the sweep failed: {', '.join(jobs)}; each job's error is above and in "
        f"its log, the other jobs' results are kept. Fix the failed values and run them again."
    )


def run_sweep(hydra_task: Callable[[], Any]) -> Any:
    """Run a multirun; if jobs failed, end with one line naming them (exit 2 when each failed on a user mistake,
    1 after a bug, whose traceback is printed first) instead of Hydra's traceback of the first failure."""
    _sweep_jobs.clear()
    _failed_jobs.clear()
    try:
        with _hydra_raises():
            return hydra_task()
    except Exception as error:
        failed = list(_failed_jobs)
        if not failed:  # not a job of this process: Hydra's own mistake, or a job run by another launcher
            if isinstance(error, CompactHydraException):
                print_error(" ".join(str(error).split()))
                sys.exit(1)
            user_error = _user_error(error)
            if user_error is None:
                raise
            print_error(f"a job of the sweep failed: {user_error}")
            sys.exit(2)
        for job in failed:
            if not job.user_error:
                traceback.print_exception(job.error)
        print_error(failed_jobs_message(failed, len(set(_sweep_jobs))))
        sys.exit(2 if all(job.user_error for job in failed) else 1)
    finally:
        _sweep_jobs.clear()
        _failed_jobs.clear()


def check_run_dir_override(argv: Sequence[str]) -> None:
    """A ``hydra.run.dir=DIR`` that cannot be a folder (under a file, on a read-only path) as one line, exit 2:
    Hydra creates the dir before simlearn runs and would end with a traceback."""
    for arg in argv:
        if arg.startswith("hydra.run.dir="):
            folder = Path(arg.split("=", 1)[1].strip("'\""))
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                print_error(
                    f"hydra.run.dir={folder} cannot be created ({error.strerror or error}); "
                    f"give a folder path you can write to, e.g. hydra.run.dir=outputs/my_run."
                )
                sys.exit(2)


def hydra_command(
    config_name: str, claims_run_dir: bool = True
) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """The one wrapper of every command-line entry point: ``@hydra_command("eval") def main(cfg): ...``.

    Hydra composes ``configs/<config_name>.yaml`` with the command line; unknown keys, config group options that do
    not exist and missing required values get one message and exit code 2 (in a sweep too), as does any
    :class:`~simlearn.errors.UserError` the command raises. With
    ``claims_run_dir`` the command owns its run dir while it runs (:func:`~simlearn.run_dir.claim_run_dir`): never
    one that is in use or holds another run's results. Training claims its dir itself, because a resume may reuse it.

    Each command imports its library function inside ``task``, after these checks: this module and the configs need
    only Hydra, so a mistyped key, a missing value or a run dir in use is reported in about a second, where loading
    torch and Lightning first takes 10-20 s on a small CPU.
    """

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def owned(cfg: DictConfig) -> Any:
            check_required(cfg)
            if not claims_run_dir:
                return quiet_task(cfg)
            with claim_run_dir(cfg.paths.output_dir, config_name):
                return quiet_task(cfg)

        def quiet_task(cfg: DictConfig) -> Any:
            quiet_console()  # Hydra has configured logging by now: each message once (simlearn.console)
            return task(cfg)

        hydra_task = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(
            exit_on_user_error(owned)
        )

        @functools.wraps(task)
        def main() -> Any:
            check_overrides(config_name, sys.argv[1:])
            check_run_dir_override(sys.argv[1:])
            if any(arg in ("-m", "--multirun") for arg in sys.argv[1:]):
                return run_sweep(hydra_task)
            return hydra_task()

        return main

    return decorate
