"""Every loss on MNIST, on unseen classes and closed-set, with the same network, batch, optimiser and epochs.

    python scripts/compare_losses.py --root ../shared/data [--seeds 0 1 2] [--epochs 2] [--out outputs/compare_losses]

Two protocols (README "Benchmarks"):

* **unseen**: ``data.split_by=class``, training on the digits 0–4 and testing on the never-seen 5–9 (the field's
  protocol: retrieval of classes the model never saw);
* **closed**: the usual item split, every digit in training and test (MNIST's official test images).

Each loss trains ``--epochs`` epochs on at most ``--max-train`` training images (seeded subset), with PML's
``MPerClassSampler`` (every class in every batch of 160), AdamW lr 0.003, the small CNN and a 64-d embedding, no
validation (the last epoch is tested, the same rule for every loss), then tests on at most ``--max-test`` test images
searched against themselves. Per loss and protocol: test MAP@R, recall@1 and NMI as mean ± std over the seeds, and
the mean training wall time (``train/wall_s``: the training loop, start-up excluded). ``untrained`` is the same
network with no training (``train=false``), the floor every loss must beat.

Runs already done (``OUT/<protocol>/<loss>/seed<k>/metrics.json``) are read, not trained again, so an interrupted
comparison goes on where it stopped (the run it was in, left without metrics, is trained again from the start);
delete a run dir to redo it. The table is printed and written to
``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import QUIET_RUN  # noqa: E402  (scripts/ is on the path of a script run from it)

LOSSES = [
    "softmax",
    "arcface",
    "cosface",
    "subcenter_arcface",
    "proxy_anchor",
    "contrastive",
    "triplet",
    "multi_similarity",
    "supcon",
    "xbm_contrastive",
    "digits_multitask",
]
PROTOCOLS = {
    # batches of 160: 32 of each of the 5 training digits, or 16 of each of the 10
    "unseen": ["data.split_by=class", "data.train_classes=[0,1,2,3,4]", "data.test_classes=[5,6,7,8,9]",
               "data.m_per_class=32"],
    "closed": ["data.val_fraction=0", "data.m_per_class=16"],
}  # fmt: skip
METRICS = (("test/map@r", "MAP@R"), ("test/recall@1", "recall@1"), ("test/nmi", "NMI"))


def overrides(args: argparse.Namespace, protocol: str, loss: str, seed: int) -> list[str]:
    """The run's config: the same for every loss but the loss itself."""
    common = [
        "data=mnist",
        f"data.root={args.root}",
        "data.download=false",
        "data.batch_size=160",
        f"data.max_train={args.max_train}",
        f"data.max_test={args.max_test}",
        f"trainer.max_epochs={args.epochs}",
        f"seed={seed}",
        *QUIET_RUN,
    ]
    if loss == "untrained":
        return [*common, *PROTOCOLS[protocol], "train=false"]
    return [*common, *PROTOCOLS[protocol], f"loss={loss}"]


def run(args: argparse.Namespace, protocol: str, loss: str, seed: int) -> dict[str, float]:
    """Train and test one configuration in this process (or read its earlier result)."""
    from simlearn.config import compose_config
    from simlearn.train import train

    out = Path(args.out) / protocol / loss / f"seed{seed}"
    done = out / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    if out.exists():  # a run killed before its metrics (a short run): trained again from the start
        print(f"{protocol:7s} {loss:18s} seed {seed}: {out} has no metrics.json (interrupted); training it again")
        shutil.rmtree(out)
    started = time.perf_counter()
    metrics = train(compose_config(overrides(args, protocol, loss, seed), output_dir=out))
    print(f"{protocol:7s} {loss:18s} seed {seed}: map@r {metrics['test/map@r']:.4f} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    return json.loads(done.read_text())


def cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results: dict[tuple[str, str], list[dict]], losses: list[str], protocols: list[str]) -> str:
    head = ["loss"]
    for protocol in protocols:
        head += [f"{protocol} {name}" for _, name in METRICS] + [f"{protocol} train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for loss in losses:
        row = [loss]
        for protocol in protocols:
            runs = results.get((protocol, loss), [])
            row += [cell([r[key] for r in runs if key in r]) for key, _ in METRICS]
            walls = [r["train/wall_s"] for r in runs if "train/wall_s" in r]
            row.append(f"{statistics.mean(walls):.0f}" if walls else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="data root holding MNIST/raw/")
    parser.add_argument("--losses", nargs="+", default=["untrained", *LOSSES])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-train", type=int, default=10000)
    parser.add_argument("--max-test", type=int, default=5000)
    parser.add_argument("--out", default=str(REPO / "outputs" / "compare_losses"))
    args = parser.parse_args()
    args.root = str(Path(args.root).resolve())
    results: dict[tuple[str, str], list[dict]] = {}
    for seed in args.seeds:  # seeds outermost: an early stop still leaves every loss with a seed
        for protocol in args.protocols:
            for loss in args.losses:
                results.setdefault((protocol, loss), []).append(run(args, protocol, loss, seed))
    text = table(results, args.losses, args.protocols)
    settings = (
        f"MNIST, {args.epochs} epochs, ≤ {args.max_train} training and ≤ {args.max_test} test images, seeds "
        f"{args.seeds}; mean ± std over the seeds; train s: mean training wall time (`train/wall_s`)."
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.md").write_text(text + "\n\n" + settings + "\n")
    print(text + "\n\n" + settings)


if __name__ == "__main__":
    main()
