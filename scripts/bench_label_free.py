"""Label-free training against the labelled paths: the same network and training budget for every row.

    python scripts/bench_label_free.py --datasets digits                                  # seconds per row
    python scripts/bench_label_free.py --datasets mnist --root /work/shared/data --max-train 10000 --epochs 1 \
        --batch 256 --max-test 2000              # README: ~30 min of a shared 2-core CPU without VICReg and BYOL

Rows (README "Label-free training: the benchmark"), each one run of ``simlearn.train`` with the small CNN, the 64-d
projection head, AdamW lr 0.003, batch ``--batch`` and ``--epochs`` epochs over at most ``--max-train`` training
images (seeded subset), tested on at most ``--max-test`` test images searched against themselves:

* ``untrained``: the same network with no training (``train=false``), the floor;
* ``autoencoder`` (``loss=reconstruction``), ``simclr``, ``vicreg``, ``byol``: trained with ``data.labels=none``
  (the loss reads no label; the labels evaluate only, and pick the best epoch by ``val/recall@1`` as every row does);
* ``cosine``: the cosine classifier (``loss=softmax``, PML ``NormalizedSoftmaxLoss``) with all the labels;
* ``cosine 1% scratch`` / ``cosine 1% fine-tuned`` (and 10 %): ``data.label_fraction`` of each class's training
  items, from scratch or from the best label-free row's best checkpoint (``init_from=``; "best" by ``val/map@r``).
  A label-fraction row trains ``round(1 / fraction)`` times the epochs (validating once per ``round(1 / fraction)``
  epochs), so that every row sees the same number of training images; a label-free row sees each one twice (two
  views), which is the method.

Columns: test recall@1, MAP@R, kNN accuracy (k = 5), NMI, copy-detection recall@1, uniformity (Wang & Isola; lower
is more uniform) and the training wall time (``train/wall_s``: the training loop, start-up and test excluded).
Runs already done (``OUT/<dataset>/<row>/metrics.json``) are read, not trained again; a run dir without metrics is
trained again from the start. The table is printed as Markdown and written with the figures to
``OUT/<dataset>/table.md`` and ``OUT/<dataset>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import QUIET_RUN  # noqa: E402  (scripts/ is on the path of a script run from it)

LABEL_FREE = ["simclr", "vicreg", "byol"]
COLUMNS = (
    ("test/recall@1", "recall@1"),
    ("test/map@r", "MAP@R"),
    ("test/knn_accuracy@5", "kNN acc"),
    ("test/nmi", "NMI"),
    ("test/copy/recall@1", "copy R@1"),
    ("test/uniformity", "uniformity"),
)


def common(args: argparse.Namespace, dataset: str) -> list[str]:
    """What every row of a dataset shares: data, caps, batch, epochs, seed, and no plots or loggers."""
    data = ["data=digits"]
    if dataset == "mnist":
        data = ["data=mnist", f"data.root={args.root}", "data.download=false", f"data.max_val={args.max_val}"]
    caps = [f"data.max_train={args.max_train}"] if args.max_train else []
    caps += [f"data.max_test={args.max_test}"] if args.max_test else []
    return [
        *data,
        *caps,
        f"data.batch_size={args.batch}",
        f"trainer.max_epochs={args.epochs}",
        f"seed={args.seed}",
        *QUIET_RUN,
        *args.override,
    ]


def row_overrides(args: argparse.Namespace, row: str, init_from: str | None) -> list[str]:
    """The overrides that make one row (on top of :func:`common`)."""
    if row == "untrained":
        return ["train=false"]
    if row == "autoencoder":
        return ["loss=reconstruction", "data.labels=none"]
    if row in LABEL_FREE:
        return [f"loss={row}", "data.labels=none"]
    if row == "cosine":
        return ["loss=softmax"]
    fraction, start = row_fraction(row)
    scale = round(1 / fraction)
    extra = [f"init_from={init_from}"] if start == "fine-tuned" else []
    return [
        "loss=softmax",
        f"data.label_fraction={fraction}",
        f"trainer.max_epochs={args.epochs * scale}",
        f"trainer.check_val_every_n_epoch={scale}",
        *extra,
    ]


def row_fraction(row: str) -> tuple[float, str]:
    """``"cosine 1% scratch"`` -> (0.01, "scratch")."""
    _, share, start = row.split()
    return float(share.rstrip("%")) / 100, start


def run(args: argparse.Namespace, dataset: str, row: str, init_from: str | None = None) -> dict:
    """Train and test one row in this process (or read its earlier result)."""
    from simlearn.config import compose_config
    from simlearn.train import train

    out = Path(args.out) / dataset / row.replace(" ", "_").replace("%", "pc")
    done = out / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    if out.exists():  # killed before its metrics: trained again from the start
        shutil.rmtree(out)
    started = time.perf_counter()
    train(compose_config([*common(args, dataset), *row_overrides(args, row, init_from)], output_dir=out))
    metrics = json.loads(done.read_text())
    print(f"{dataset} {row}: MAP@R {metrics['test/map@r']:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return metrics


def best_checkpoint(run_dir: Path) -> str:
    """The run's best checkpoint (``best-*.ckpt``), else its last."""
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    return str(best[-1] if best else run_dir / "checkpoints" / "last.ckpt")


def table(results: dict[str, dict]) -> str:
    head = ["row", *(name for _, name in COLUMNS), "train s"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for row, metrics in results.items():
        cells = [f"{metrics[key]:.3f}" if key in metrics else "–" for key, _ in COLUMNS]
        wall = metrics.get("train/wall_s")
        lines.append("| " + " | ".join([row, *cells, f"{wall:.0f}" if wall is not None else "–"]) + " |")
    return "\n".join(lines)


def bench(args: argparse.Namespace, dataset: str) -> None:
    """Every row of one dataset; the table and the figures written to ``OUT/<dataset>/``."""
    results: dict[str, dict] = {}
    for row in ["untrained", "autoencoder", *LABEL_FREE, "cosine"]:
        if row in args.rows:
            results[row] = run(args, dataset, row)
    free = [row for row in LABEL_FREE if row in results]
    best = max(free, key=lambda row: results[row]["val/map@r"]) if free else None
    init_from = best_checkpoint(Path(args.out) / dataset / best) if best else None
    for fraction in args.fractions:
        for start in ("scratch", "fine-tuned"):
            row = f"cosine {fraction:.0%} {start}"
            if start == "fine-tuned" and best is None:
                continue
            if "few" in args.rows:
                results[row if start == "scratch" else f"{row} from {best}"] = run(args, dataset, row, init_from)
    size = f"≤ {args.max_train:,}" if args.max_train else "all"
    header = (
        f"{dataset}: {size} training images, {args.epochs} epoch(s) (label-fraction rows: the same images seen), "
        f"batch {args.batch}, seed {args.seed}, test ≤ {args.max_test or 'all'} images; best label-free by val MAP@R: "
        f"{best}"
    )
    text = header + "\n\n" + table(results)
    out = Path(args.out) / dataset
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "best": best, "rows": results}, indent=1))
    print(text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist"], choices=["digits", "mnist"])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data"), help="data root holding MNIST/raw/")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=["untrained", "autoencoder", *LABEL_FREE, "cosine", "few"],
        help="rows to run; few: the --fractions label rows (fine-tuned from the best label-free row run)",
    )
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1], help="label fractions of few")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--max-train", type=int, default=None, help="training images (seeded subset); default all")
    parser.add_argument("--max-val", type=int, default=1000, help="MNIST validation images")
    parser.add_argument("--max-test", type=int, default=None, help="test images; default all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--override", nargs="*", default=[], help="extra overrides for every row (a variant)")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_label_free"))
    args = parser.parse_args()
    args.root = str(Path(args.root).resolve())
    for dataset in args.datasets:
        bench(args, dataset)


if __name__ == "__main__":
    main()
