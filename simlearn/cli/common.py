"""What the command-line entry points share: one Hydra wrapper, user errors as one line without a traceback."""

from __future__ import annotations

import difflib
import functools
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue
from rich.console import Console
from rich.markup import escape

from simlearn.config import config_dir
from simlearn.errors import UserError, user_error_in
from simlearn.run_dir import claim_run_dir


def print_error(message: str) -> None:
    # escaped: a message quoting brackets (pip install 'simlearn[serve]', data.classes=[cat]) is text, not markup
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def exit_on_user_error(function: Callable[..., Any]) -> Callable[..., Any]:
    """Print a user mistake as one message on stderr and exit with status 2 instead of a traceback.

    In a multirun the job raises instead, so that Hydra records it as failed and the other jobs (and their files)
    carry on; the sweep reports the failure at its end.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (UserError, InstantiationException, MissingMandatoryValue) as error:
            user_error = user_error_in(error)
            if user_error is not None:
                message = str(user_error)
            elif isinstance(error, MissingMandatoryValue):
                message = f"{error.full_key} is required; give it on the command line, e.g. {error.full_key}=PATH."
            else:
                message = f"could not build an object from the config:\n{error}"
            print_error(message)
            if in_multirun():
                logging.getLogger(function.__module__).error("error: %s", message.replace("\n", " "))
                raise
            sys.exit(2)

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


def unknown_key_message(config_name: str, overrides: Sequence[str], error: BaseException) -> str | None:
    """One line for an override of a key the config does not have (Hydra says only "not in struct"): the key, the
    closest valid keys, and the ``+key=value`` form that adds a new key on purpose."""
    cause = error.__cause__ or error.__context__
    if not isinstance(cause, ConfigKeyError | ConfigAttributeError) or not cause.full_key:
        return None
    full_key = str(cause.full_key)
    override = next((o for o in overrides if o.lstrip("~+").split("=", 1)[0] == full_key), full_key)
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
    message = f"{override}: {full_key!r} is not a key of the {config_name} config"
    if close:
        prefix = f"{parent}." if parent else ""
        message += f"; did you mean {' or '.join(prefix + c for c in close)}?"
    elif valid:
        message += f"; the keys at {where} are {valid}."
    return message + f" To add a new key on purpose, write +{override.lstrip('+~')}."


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name=config_name):
        return compose(config_name=config_name, overrides=list(overrides))


def check_overrides(config_name: str, argv: Sequence[str]) -> None:
    """Compose the config as Hydra will, before Hydra does, to turn an unknown key into one clear line (exit 2).

    Only ``key=value`` overrides of a single run are checked; flags, ``hydra.*`` settings and sweeps are left to
    Hydra, and any other composition error is reported by Hydra as usual.
    """
    if any(arg in ("-m", "--multirun") or arg.startswith("-") for arg in argv):
        return
    overrides = [arg for arg in argv if "=" in arg and not arg.lstrip("+~").startswith("hydra")]
    try:
        _compose(config_name, overrides)
    except ConfigCompositionException as error:
        message = unknown_key_message(config_name, overrides, error)
        if message is not None:
            print_error(message)
            sys.exit(2)
    except Exception:  # noqa: S110 (Hydra itself reports every other mistake when it runs)
        pass
    finally:
        GlobalHydra.instance().clear()


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

    Hydra composes ``configs/<config_name>.yaml`` with the command line; unknown keys and missing required values
    get one message and exit code 2, as does any :class:`~simlearn.errors.UserError` the command raises. With
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
                return task(cfg)
            with claim_run_dir(cfg.paths.output_dir, config_name):
                return task(cfg)

        hydra_task = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(
            exit_on_user_error(owned)
        )

        @functools.wraps(task)
        def main() -> Any:
            check_overrides(config_name, sys.argv[1:])
            check_run_dir_override(sys.argv[1:])
            return hydra_task()

        return main

    return decorate
