"""Post-processing steps (αQE, αDBA, k-reciprocal re-ranking and chains of them): quality, time and memory.

    python scripts/bench_postprocess.py                                       # digits + 10k and 100k synthetic
    python scripts/bench_postprocess.py --mnist-root /work/shared/data        # + MNIST with unseen classes
    python scripts/bench_postprocess.py --sizes 10000 --skip-quality          # timing rows only

**Quality rows**: a model trained inside the script (``simlearn.train``, the small CNN, ``--epochs``), its test
embeddings (``embeddings.npz`` of the run) searched against themselves (leave-one-out), recall@1 and MAP@R of the
plain ranking and of each chain, all by :func:`simlearn.evaluation.retrieval_metrics` (``rank=`` the
post-processed ranking): the digits (450 test images, the 10 digits seen in training), and with ``--mnist-root``
MNIST with unseen classes (the loss comparison's recipe: training on the digits 0-4, at most 10,000 images; testing
on at most 5,000 images of the digits 5-9).

**Timing rows**: clustered synthetic unit vectors (:func:`bench_common.clustered_vectors`, d = ``--dim``, about 10
items per class) as the gallery and ``--queries`` fresh items of the same distribution as the queries, each
measurement in a fresh interpreter: the plain exact ranking (100 places per query), then each chain; "extra ms per
query" is the chain's wall time over the number of queries (the gallery-side work, DBA's augmentation and the
gallery's k-nearest lists of k-reciprocal re-ranking, counted in: it is done per call), "extra peak" the process's
peak resident memory beyond the plain ranking's. Figures are wall-clock on whatever machine runs it; on a shared
machine they are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import clustered_vectors, measure_in_subprocess, peak_rss_bytes  # noqa: E402

CHAINS = [
    [],
    ["aqe"],
    ["dba"],
    ["k_reciprocal"],
    ["dba", "aqe"],
    ["aqe", "k_reciprocal"],
    ["dba", "aqe", "k_reciprocal"],
]
TIMED = [[], ["aqe"], ["dba"], ["k_reciprocal"], ["dba", "aqe", "k_reciprocal"]]
DEPTH = 100


def name(chain: list[str]) -> str:
    return "+".join(chain) or "none (plain search)"


def quality(embeddings, labels, chain: list[str]) -> tuple[float, float, float]:
    """(recall@1, MAP@R, seconds) of the chain's ranking, leave-one-out."""
    from simlearn.evaluation import retrieval_metrics
    from simlearn.retrieval import postprocessed_ranker, postprocessors

    started = time.perf_counter()
    rank = postprocessed_ranker(postprocessors(chain)) if chain else None
    metrics = retrieval_metrics(embeddings, labels, ks=(1,), rank=rank)
    return metrics["recall@1"], metrics["map@r"], time.perf_counter() - started


def trained_embeddings(overrides: list[str], out: Path):
    """Train and test in this process; the test split's embeddings and labels of the run."""
    import numpy as np

    from simlearn.config import compose_config
    from simlearn.train import train

    common = ["logger=none", "reports.plots=null", "reports.structure=null", "callbacks.rich_progress_bar=null"]
    train(compose_config([*common, *overrides], output_dir=out))
    data = np.load(out / "embeddings.npz")
    return data["embeddings"], data["labels"]


def quality_rows(args: argparse.Namespace) -> list[str]:
    datasets = {"digits": ["data=digits", f"trainer.max_epochs={args.epochs}"]}
    if args.mnist_root:
        datasets["MNIST, unseen classes 5-9"] = [
            "data=mnist",
            f"data.root={args.mnist_root}",
            "data.download=false",
            "data.split_by=class",
            "data.train_classes=[0,1,2,3,4]",
            "data.test_classes=[5,6,7,8,9]",
            "data.m_per_class=32",
            "data.batch_size=160",
            "data.max_train=10000",
            "data.max_test=5000",
            f"trainer.max_epochs={args.epochs}",
        ]
    rows = [
        "| data | post-processing | recall@1 | MAP@R | wall s |",
        "| --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (dataset, overrides) in enumerate(datasets.items()):
            x, y = trained_embeddings(overrides, Path(tmp) / str(i))
            base = None
            for chain in CHAINS:
                r1, mapr, seconds = quality(x, y, chain)
                base = base or (r1, mapr)
                delta = "" if not chain else f" ({r1 - base[0]:+.4f})"
                row = f"| {dataset} ({len(x)} test) | {name(chain)} | {r1:.4f}{delta} | {mapr:.4f}"
                row += f"{'' if not chain else f' ({mapr - base[1]:+.4f})'} | {seconds:.2f} |"
                print(row, flush=True)
                rows.append(row)
    return rows


def worker(spec: dict) -> dict:
    """One measurement: the plain ranking of the queries, then the chain; wall times, peak memory, quality."""
    from simlearn.evaluation import retrieval_metrics
    from simlearn.retrieval import apply_postprocess, postprocessed_ranker, postprocessors, search_ranking

    n, d, nq = spec["n"], spec["d"], spec["queries"]
    noise = math.sqrt(max(0.25, math.sqrt(d) / 3 - 1))  # bench_eval's: a class's items at cosine about 0.6
    x, labels = clustered_vectors(n + nq, d, 10, 0, noise)
    gallery, queries = x[:n], x[n:]
    steps = postprocessors(spec["chain"])
    started = time.perf_counter()
    ranking = search_ranking(queries, gallery, DEPTH)
    plain_s = time.perf_counter() - started
    started = time.perf_counter()
    ranked = apply_postprocess(ranking, steps)
    chain_s = time.perf_counter() - started
    peak = peak_rss_bytes()
    del ranked
    metrics = retrieval_metrics(
        queries, labels[n:], (1,), gallery, labels[:n], rank=postprocessed_ranker(steps) if steps else None
    )
    return {"plain_s": plain_s, "chain_s": chain_s, "peak_rss": peak, "recall@1": metrics["recall@1"],
            "map@r": metrics["map@r"]}  # fmt: skip


def timing_rows(args: argparse.Namespace) -> list[str]:
    rows = [
        "| gallery | post-processing | recall@1 | MAP@R | extra ms per query | peak MiB (beyond the plain search's) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n in args.sizes:
        plain = None
        for chain in TIMED:
            spec = {"n": n, "d": args.dim, "queries": args.queries, "chain": chain}
            result = measure_in_subprocess(os.path.abspath(__file__), spec, args.timeout)
            if "error" in result:
                rows.append(f"| {n:,} | {name(chain)} | {result['error']} | | | |")
                print(rows[-1], flush=True)
                continue
            peak = result["peak_rss"] / 2**20
            if not chain:
                plain = result
                ms = f"({1000 * result['plain_s'] / args.queries:.2f} ms per query)"
                quality = f"{result['recall@1']:.4f} | {result['map@r']:.4f}"
                row = f"| {n:,} | {name(chain)} {ms} | {quality} | 0 | {peak:.0f} |"
            else:
                extra = f" (+{peak - plain['peak_rss'] / 2**20:.0f})" if plain else ""
                row = (f"| {n:,} | {name(chain)} | {result['recall@1']:.4f} | {result['map@r']:.4f} | "
                       f"{1000 * result['chain_s'] / args.queries:.2f} | {peak:.0f}{extra} |")  # fmt: skip
            print(row, flush=True)
            rows.append(row)
    return rows


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10000, 100000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--mnist-root", default=None, help="a folder holding MNIST/raw/: adds the unseen-class rows")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    rows = [] if args.skip_quality else quality_rows(args)
    rows += ["", *timing_rows(args)] if args.sizes else []
    print("\n".join(rows))


if __name__ == "__main__":
    main()
