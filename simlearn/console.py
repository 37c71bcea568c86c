"""What runs print for people: the table of metrics at the end of a run."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.table import Table


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
