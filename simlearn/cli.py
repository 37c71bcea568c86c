"""What the command-line entry points share: user errors without tracebacks, and the metrics table."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from rich.console import Console
from rich.table import Table

from simlearn.errors import UserError


def _user_error(error: BaseException) -> UserError | None:
    while error is not None:
        if isinstance(error, UserError):
            return error
        error = error.__cause__ or error.__context__
    return None


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
        except (UserError, InstantiationException) as error:
            user_error = _user_error(error)
            message = str(user_error) if user_error else f"could not build an object from the config:\n{error}"
            Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            if in_multirun():
                logging.getLogger(function.__module__).error("error: %s", message.replace("\n", " "))
                raise
            sys.exit(2)

    return wrapper


def print_metrics(metrics: Mapping[str, float], title: str) -> None:
    """A table of the val/ and test/ metrics, one row per metric."""
    table = Table(title=title, title_justify="left")
    splits = [split for split in ("val", "test") if any(key.startswith(f"{split}/") for key in metrics)]
    names = sorted({key.split("/", 1)[1] for key in metrics if key.split("/", 1)[0] in splits})
    table.add_column("metric")
    for split in splits:
        table.add_column(split, justify="right")
    for name in names:
        cells = [metrics.get(f"{split}/{name}") for split in splits]
        table.add_row(
            name,
            *["" if v is None else (f"{v:.0f}" if name.startswith("num_") else f"{v:.4f}") for v in cells],
        )
    Console().print(table)
