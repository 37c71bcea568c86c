"""Tabulating a Hydra multirun: one row per job, sorted by a metric, as CSV and markdown."""

from __future__ import annotations

import argparse
import csv
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Tabulate a Hydra multirun dir into a sorted CSV and markdown table.")
    parser.add_argument("sweep_dir", help="the multirun dir (hydra.sweep.dir), e.g. outputs/train/multiruns/<date>")
    parser.add_argument("--metric", default="val/best_recall@1", help="metric to sort by (default: %(default)s)")
    parser.add_argument("--ascending", action="store_true", help="lower is better")
    parser.add_argument("--csv", default=None, help="CSV path (default: <sweep_dir>/summary.csv)")
    args = parser.parse_args(argv)

    rows = sort_rows(collect(args.sweep_dir), args.metric, descending=not args.ascending)
    if not rows:
        raise SystemExit(f"error: no Hydra jobs (.hydra/overrides.yaml) found under {args.sweep_dir}.")
    metric_columns = [m for m in dict.fromkeys([args.metric, *DEFAULT_METRICS]) if any(m in r for r in rows)]
    columns = ["job", "status", *metric_columns, "overrides"]
    csv_path = Path(args.csv) if args.csv else Path(args.sweep_dir) / "summary.csv"
    all_columns = list(dict.fromkeys(key for row in rows for key in row))
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=all_columns)
        writer.writeheader()
        writer.writerows(rows)
    print(to_markdown(rows, columns))
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"\n{len(rows) - len(failed)} finished, {len(failed)} failed; full table: {csv_path}")
    for row in failed:
        print(f"failed: {row['job']} ({row['overrides']}): {row['error']}")


if __name__ == "__main__":
    main()
