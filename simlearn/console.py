"""What runs print for people: the table of metrics at the end of a run, and a console with each message once."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping

from rich.console import Console
from rich.markup import escape
from rich.table import Table

#: The loggers Lightning gives a console handler of its own at import: ``lightning`` always, ``lightning.pytorch``
#: and ``lightning.fabric`` when the root logger had none yet.
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
#: How Lightning's advertisements start: every Trainer without a LitLogger recommends litlogger, one without a
#: checkpoint callback of its own (simlearn-eval's) litmodels.
LIGHTNING_TIP = "💡 Tip: "


def is_count(key: str) -> bool:
    """Whether a metric counts something (``…/num_queries``, ``…/num_gallery``, ``train/epochs``): an integer in
    ``metrics.json`` and in the table, never ``450.0``."""
    name = key.rsplit("/", 1)[-1]
    return name.startswith("num_") or name == "epochs"


def print_metrics(metrics: Mapping[str, float], title: str) -> None:
    """A table of the val/ and test/ metrics, one row per metric, under ``title`` (e.g. the run dir).

    The title is a line of its own, never wrapped: as the table's title rich wrapped it to the table's width, a long
    run dir over three lines, cut mid-word.
    """
    table = Table()
    splits = [split for split in ("val", "test") if any(key.startswith(f"{split}/") for key in metrics)]
    names = sorted({key.split("/", 1)[1] for key in metrics if key.split("/", 1)[0] in splits})
    table.add_column("metric")
    for split in splits:
        table.add_column(split, justify="right")
    for name in names:
        cells = [metrics.get(f"{split}/{name}") for split in splits]
        table.add_row(name, *["" if v is None else (f"{v:.0f}" if is_count(name) else f"{v:.4f}") for v in cells])
    console = Console()
    console.print(escape(title), soft_wrap=True, highlight=False)
    console.print(table)


def _is_console_handler(handler: logging.Handler) -> bool:
    """Lightning's console handlers are plain StreamHandlers; never a file handler (a subclass) nor Hydra's."""
    return type(handler) is logging.StreamHandler


def _refuse_console_handlers(logger: logging.Logger) -> None:
    """Make ``logger`` ignore console handlers added to it while the root logger has handlers: ``import lightning``
    adds one to the ``lightning`` logger unconditionally (its ``lightning.pytorch`` and ``lightning.fabric`` ones
    only when the root has none), and the logger exists before that import, so the refusal holds for it."""
    if getattr(logger.addHandler, "_simlearn_refuses_console", False):
        return
    add = logger.addHandler

    def add_handler(handler: logging.Handler) -> None:
        if _is_console_handler(handler) and logging.getLogger().handlers:
            return
        add(handler)

    add_handler._simlearn_refuses_console = True  # type: ignore[attr-defined]
    logger.addHandler = add_handler  # type: ignore[method-assign]


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_TIP)


def quiet_console() -> None:
    """Make a command's console say each thing once, and nothing that reads as an error when nothing is wrong.

    Call it once logging is configured (Hydra configures the root logger before a command's task runs):

    * Lightning adds a console handler of its own (``INFO: …``) to the ``lightning`` logger at import, and its
      records also reach the root logger's handlers (Hydra's console and the run's log file): every Lightning
      message was printed twice. When the root logger has handlers, Lightning's own are dropped and its records go
      to the root's only, so they are printed once and kept in the log file.
    * Lightning's tips to install litlogger and litmodels (its cloud services), printed by every Trainer without
      them: advertisements, nothing about the run.
    * The FutureWarning that torch raises inside Lightning's own pytree helper (``isinstance(treespec, LeafSpec)``
      is deprecated): nothing in simlearn calls it and the user cannot act on it; Lightning has to move.

    Only these are filtered, by logger and message: every other warning is shown as before. Safe to call again.

    Lightning is not imported here: a command that stops with a one-line error before it needs Lightning answers in
    a second, not after 5-15 s of imports. When Lightning is imported later its console handlers are refused as
    they are added (:func:`_refuse_console_handlers`).
    """
    if logging.getLogger().handlers:
        for name in LIGHTNING_LOGGERS:
            logger = logging.getLogger(name)
            for handler in logger.handlers[:]:
                if _is_console_handler(handler):
                    logger.removeHandler(handler)
            _refuse_console_handlers(logger)
            logger.propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLightningTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLightningTips())
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
