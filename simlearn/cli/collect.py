"""``simlearn-collect SWEEP_DIR [--metric KEY]``: tabulate a Hydra multirun into a sorted CSV and markdown table."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from simlearn.sweeps import DEFAULT_METRICS, collect, sort_rows, to_markdown


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
