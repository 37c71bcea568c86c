"""Markdown table of the MNIST experiments' results, read from their run dirs.

    python scripts/mnist_table.py OUT_DIR [EXPERIMENT ...]     # print the table
    python scripts/mnist_table.py --record RUN_DIR WALL_S CPU_S  # write RUN_DIR/run_info.json (times, hardware)

Each run dir ``OUT_DIR/<experiment>`` holds the run's ``metrics.json``, ``structure.json``, ``config.yaml`` and the
``run_info.json`` that scripts/reproduce_mnist.sh records after the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import yaml

EXPERIMENTS = ["mnist_multitask", "mnist_softmax", "mnist_triplet", "mnist_contrastive", "mnist_autoencoder"]
GROUPS = ["same_digit", "same_parity_near", "same_parity_far", "different_parity"]


def hardware() -> str:
    """The CPU model and core count, and the GPU when torch sees one."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    text = f"{cpu}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def record(run_dir: Path, wall_s: float, cpu_s: float | None = None) -> None:
    info = {"wall_time_s": round(wall_s, 1), "cpu_time_s": None if cpu_s is None else round(cpu_s, 1)}
    info["hardware"] = hardware()
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _epochs(run_dir: Path) -> str:
    config = run_dir / "config.yaml"  # the run's resolved config
    if not config.exists():
        return "?"
    return str((yaml.safe_load(config.read_text()).get("trainer") or {}).get("max_epochs", "?"))


def _number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _minutes(seconds) -> str:
    return "?" if seconds is None else f"{seconds / 60:.1f} min"


def table(out_dir: Path, experiments: list[str]) -> str:
    header = (
        "| experiment | epochs | test recall@1 | test MAP@R | cos same digit | cos same parity, |a−b|=2 "
        "| cos same parity, |a−b|≥4 | cos different parity | parity gap | wall time | CPU time | hardware |"
    )
    lines = [header.replace("|a−b|", "\\|a−b\\|"), "|" + "---|" * header.count(" | ") + "---|"]
    for name in experiments:
        run_dir = out_dir / name
        metrics, structure, info = (_read(run_dir / f) for f in ("metrics.json", "structure.json", "run_info.json"))
        if not metrics:
            lines.append(f"| {name} | not run |" + " |" * (header.count(" | ") - 1))
            continue
        cos = [_number(structure.get(g, {}).get("cos")) for g in GROUPS]
        lines.append(
            f"| {name} | {_epochs(run_dir)} | {_number(metrics.get('test/recall@1'), 4)} "
            f"| {_number(metrics.get('test/map@r'), 4)} | {' | '.join(cos)} | {_number(structure.get('parity_gap'))} "
            f"| {_minutes(info.get('wall_time_s'))} | {_minutes(info.get('cpu_time_s'))} "
            f"| {info.get('hardware', '?')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--record", nargs=3, metavar=("RUN_DIR", "WALL_S", "CPU_S"), help="write RUN_DIR/run_info.json and exit"
    )
    parser.add_argument("out_dir", nargs="?", type=Path, help="folder holding one run dir per experiment")
    parser.add_argument("experiments", nargs="*", help=f"run dirs to read (default: {' '.join(EXPERIMENTS)})")
    args = parser.parse_args(argv)
    if args.record:
        record(Path(args.record[0]), float(args.record[1]), float(args.record[2]))
        return 0
    if args.out_dir is None:
        parser.error("give OUT_DIR, or --record RUN_DIR WALL_S CPU_S")
    print(table(args.out_dir, args.experiments or EXPERIMENTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
