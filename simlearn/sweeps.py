"""Tabulating a Hydra multirun: one row per job, sorted by a metric, as CSV and markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

DEFAULT_METRICS = ("val/best_recall@1", "test/recall@1", "test/map@r")


def collect(sweep_dir: str | Path) -> list[dict]:
    """One row per job dir of a multirun: its overrides, status, and every metric of its ``metrics.json``.

    A job without ``metrics.json`` is reported as failed (with the last lines of its log), not dropped.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SystemExit(f"error: {sweep_dir} is not a directory; give a Hydra multirun dir (hydra.sweep.dir).")
    rows = []
    for overrides_file in sorted(sweep_dir.glob("**/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        row: dict = {"job": str(job_dir.relative_to(sweep_dir)), "overrides": " ".join(overrides)}
        metrics_file = job_dir / "metrics.json"
        if metrics_file.exists():
            row.update({"status": "ok", **json.loads(metrics_file.read_text())})
        else:
            logs = sorted(job_dir.glob("*.log"))
            tail = logs[0].read_text().strip().splitlines()[-1:] if logs else []
            row.update({"status": "failed", "error": tail[0] if tail else "no metrics.json"})
        rows.append(row)
    return rows


def sort_rows(rows: list[dict], metric: str, descending: bool = True) -> list[dict]:
    """Finished jobs by ``metric`` (best first), failed ones last."""

    def key(row: dict) -> tuple[int, float]:
        value = row.get(metric)
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        return (1, 0.0) if missing else (0, -value if descending else value)

    return sorted(rows, key=key)


def to_markdown(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
