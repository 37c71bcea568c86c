"""Exact retrieval evaluation: simlearn's ``retrieval_metrics`` against PML's ``AccuracyCalculator``.

    python scripts/bench_eval.py                                   # 10k, 100k, 1M items × d = 64, 512
    python scripts/bench_eval.py --sizes 2000 10000 --dims 64      # a quick check
    python scripts/bench_eval.py --backends auto torch faiss --pml-max-items 0   # simlearn's backends only
    python scripts/bench_eval.py --device cuda --backends torch                 # simlearn on a GPU, PML on the CPU

Both evaluate the same random but clustered embeddings (Gaussian class centres plus noise, L2-normalised, about
``--per-class`` items per class, so R stays realistic) for precision@1, R-precision and MAP@R; PML with its default
faiss kNN and ``k="max_bin_count"``. Every measurement runs in a fresh subprocess that generates the data, warms up,
then times ``--repeat`` evaluations (wall clock; the fastest counts) and reads its peak resident memory
(``resource.getrusage``; on a GPU ``torch.cuda.max_memory_allocated``); the metrics of every simlearn backend must
equal PML's to ``--tol``. The GEMM floor is the float32 product of all query × gallery pairs alone, on simlearn's
device: no exact search can take less, so PML's time over it bounds the speed-up any exact method can reach there.

A size whose leave-one-out search would compare more than ``--max-pairs`` query/gallery pairs (default 1e10: 100k
items searched against themselves) is evaluated on a random sample of queries (the first items, labels are drawn
independently) against all the other items as the gallery: at 1M items, 10k queries against a 990k-item gallery.
PML is skipped above ``--pml-max-items`` items (default 100k): its label-count matrix alone takes
(query classes × gallery items) bytes twice over, about 13 GB at 1M items, and its search costs what simlearn's does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
from bench_common import clustered_vectors, measure_in_subprocess, peak_rss_bytes

GEMM_TILE = 4096
PML_METRICS = {"precision@1": "precision_at_1", "r_precision": "r_precision", "map@r": "mean_average_precision_at_r"}


def make_data(n: int, d: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n L2-normalised float32 embeddings around n // per_class Gaussian class centres. The noise grows with d so
    that MAP@R stays well inside (0, 1)."""
    return clustered_vectors(n, d, per_class, seed, math.sqrt(max(0.25, math.sqrt(d) / 3 - 1)))


def num_queries(n: int, max_pairs: float) -> int:
    """All n items (leave-one-out) when n × n fits ``max_pairs``, else the largest sample that does."""
    return n if n * n <= max_pairs else max(1, int(max_pairs // n))


# ---------------------------------------------------------------- one measurement (subprocess)


def worker(spec: dict) -> dict:
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
        try:
            import faiss

            faiss.omp_set_num_threads(spec["threads"])
        except ImportError:
            pass
    x, labels = make_data(spec["n"], spec["d"], spec["per_class"], spec["seed"])
    q = spec["queries"]
    split = q < spec["n"]

    if spec["method"] == "pml":
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calc = AccuracyCalculator(
            include=tuple(PML_METRICS.values()), k="max_bin_count", device=torch.device("cpu")
        )  # knn_func: PML's default FaissKNN

        def run(x, labels, q, split):
            if split:
                out = calc.get_accuracy(x[:q], labels[:q], x[q:], labels[q:], ref_includes_query=False)
            else:
                out = calc.get_accuracy(x, labels)
            return {ours: float(out[theirs]) for ours, theirs in PML_METRICS.items()}

    elif spec["method"] == "gemm":
        device = torch.device(spec["device"])

        def run(x, labels, q, split):
            # every query x gallery dot product in float32, 4096 x 4096 tiles, nothing else: what any exact search
            # must at least compute (simlearn's self-search would skip only the diagonal)
            xt = torch.from_numpy(x).to(device)
            queries, gallery = (xt[:q], xt[q:]) if split else (xt, xt)
            tile = torch.empty(GEMM_TILE, GEMM_TILE, device=device)
            for i in range(0, len(queries), GEMM_TILE):
                for j in range(0, len(gallery), GEMM_TILE):
                    a, b = queries[i : i + GEMM_TILE], gallery[j : j + GEMM_TILE]
                    if len(a) == len(b) == GEMM_TILE:
                        torch.matmul(a, b.T, out=tile)
                    else:
                        a @ b.T  # noqa: B018 - the product is the measurement
            if device.type == "cuda":
                torch.cuda.synchronize()
            return {}

    else:
        from simlearn.evaluation.retrieval import choose_backend, retrieval_metrics

        backend = spec["method"]
        device = torch.device(spec["device"])

        def run(x, labels, q, split):
            # from host memory, so a GPU's time includes copying the embeddings there
            xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(labels).to(device)
            gallery = {"gallery_embeddings": xt[q:], "gallery_labels": yt[q:]} if split else {}
            return retrieval_metrics(xt[:q], yt[:q], ks=spec["ks"], backend=backend, **gallery)

    # warm-up (imports, thread pools, kernels) on 5000 items: enough for backend="auto" to choose as it will below
    small_x, small_labels = make_data(5000, spec["d"], 50, spec["seed"] + 1)
    run(small_x, small_labels, 5000, False)
    del small_x, small_labels
    before = peak_rss_bytes()
    if spec["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    walls, cpus = [], []
    for _ in range(spec.get("repeat", 1)):  # the fastest of the repeats: the least disturbed by other processes
        start = time.perf_counter()
        cpu = time.process_time()
        metrics = run(x, labels, q, split)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    result = {
        "wall_s": min(walls),
        "cpu_s": min(cpus),
        "repeats": walls,
        "peak_rss": peak_rss_bytes(),
        "data_rss": before,
        "metrics": metrics,
    }
    if spec["method"] not in ("pml", "gemm"):
        result["backend"] = choose_backend(spec["method"], spec["device"], spec["n"] - q if split else spec["n"])
    if spec["device"] == "cuda":
        result["gpu_peak"] = torch.cuda.max_memory_allocated()
    return result


def measure(spec: dict, timeout: float) -> dict:
    return measure_in_subprocess(os.path.abspath(__file__), spec, timeout)


# ---------------------------------------------------------------- the table


def gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def time_text(result: dict | None) -> str:
    text = cell(result)[0]
    return text + " s" if result is not None and "error" not in result else text


def cell(result: dict | None) -> tuple[str, str]:
    if result is None:
        return "skipped", ""
    if "error" in result:
        return "failed", result["error"][:60]
    if "gpu_peak" in result:
        return f"{result['wall_s']:.2f}", f"GPU {gib(result['gpu_peak'])}"
    return f"{result['wall_s']:.2f}", f"{gib(result['peak_rss'])} (+{gib(result['peak_rss'] - result['data_rss'])})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="items")
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 512], help="embedding dimensions")
    parser.add_argument("--per-class", type=int, default=100, help="mean items per class (default 100)")
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["auto"],
        choices=["auto", "torch", "faiss"],
        help="simlearn backends to time (default: auto; add torch and faiss to compare them)",
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10], help="recall@k values simlearn computes")
    parser.add_argument(
        "--max-pairs",
        type=float,
        default=1e10,
        help="largest query × gallery pairs per evaluation; larger sizes use a query sample (default 1e10)",
    )
    parser.add_argument(
        "--pml-max-items", type=int, default=100_000, help="skip PML above this many items (default 100000)"
    )
    parser.add_argument("--tol", type=float, default=1e-5, help="largest metric difference to PML (default 1e-5)")
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where simlearn evaluates (PML: always its CPU faiss)"
    )
    parser.add_argument(
        "--skip-floor", action="store_true", help="do not time the bare float32 GEMM of all pairs (the floor)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per measurement; the fastest counts (1)")
    parser.add_argument("--threads", type=int, default=0, help="torch/faiss threads (default: all cores)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement (default 1800)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    import torch

    threads = args.threads or torch.get_num_threads()
    print(f"# bench_eval: {os.cpu_count()} CPUs, {threads} threads, torch {torch.__version__}", flush=True)
    rows, failures = [], []
    for n in args.sizes:
        for d in args.dims:
            queries = num_queries(n, args.max_pairs)
            spec = {
                "n": n,
                "d": d,
                "per_class": args.per_class,
                "seed": args.seed,
                "queries": queries,
                "ks": args.ks,
                "threads": args.threads,
                "device": args.device,
                "repeat": args.repeat,
            }
            ours = {b: measure({**spec, "method": b}, args.timeout) for b in args.backends}
            pml = measure({**spec, "method": "pml", "device": "cpu"}, args.timeout) if n <= args.pml_max_items else None
            floor = None if args.skip_floor else measure({**spec, "method": "gemm"}, args.timeout)
            # every backend against PML where it ran, else against the first backend
            reference = pml if pml is not None and "error" not in pml else None
            diffs = []
            for name, result in ours.items():
                if "error" in result:
                    failures.append(f"n={n} d={d} {name}: {result['error']}")
                    continue
                if reference is None:
                    reference = result
                    continue
                diffs.append(max(abs(result["metrics"][m] - reference["metrics"][m]) for m in PML_METRICS))
                if diffs[-1] > args.tol:
                    against = "PML" if reference is pml else "the first backend"
                    failures.append(f"n={n} d={d} {name}: metrics differ from {against} by {diffs[-1]:.1e}")
            agree = "n/a" if not diffs else f"{'yes' if max(diffs) <= args.tol else 'NO'} ({max(diffs):.0e})"
            if reference is not pml and diffs:
                agree += " between backends"
            if pml is not None and "error" in pml:
                failures.append(f"n={n} d={d} pml: {pml['error']}")
            rows.append((n, d, queries, ours, pml, floor, agree))
            first = next((r for r in ours.values() if "error" not in r), None)
            timings = [f"{b} {time_text(r)}" for b, r in [*ours.items(), ("pml", pml), ("gemm floor", floor)]]
            shown = f"  map@r {first['metrics']['map@r']:.4f}" if first is not None else ""
            print(f"  n={n} d={d} queries={queries}: " + "  ".join(timings) + shown, flush=True)

    header = ["items", "dim", "queries × gallery"]
    for b in args.backends:
        header += [f"simlearn {b} s", f"{b} peak GiB (+eval)"]
    header += ["PML s", "PML peak GiB (+eval)", "speed-up vs PML", "GEMM floor s", "largest exact speed-up"]
    header += ["MAP@R", f"same metrics to {args.tol:g} (max diff)"]
    print("\n| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for n, d, queries, ours, pml, floor, agree in rows:
        gallery = n - queries if queries < n else n - 1
        line = [f"{n:,}", str(d), f"{queries:,} × {gallery:,}" + (" (leave-one-out)" if queries == n else "")]
        for b in args.backends:
            result = ours[b]
            seconds, memory = cell(result)
            if "backend" in result and b == "auto":
                seconds += f" ({result['backend']})"
            line += [seconds, memory]
        line += list(cell(pml))
        main = ours[args.backends[0]]
        speedup = pml is not None and "error" not in pml and "error" not in main
        line.append(f"{pml['wall_s'] / main['wall_s']:.1f}×" if speedup else "n/a")
        line.append(cell(floor)[0])
        bounded = pml is not None and "error" not in pml and floor is not None and "error" not in floor
        line.append(f"{pml['wall_s'] / floor['wall_s']:.1f}×" if bounded else "n/a")
        first = next((r for r in ours.values() if "error" not in r), None)
        line.append(f"{first['metrics']['map@r']:.4f}" if first else "n/a")
        line.append(agree)
        print("| " + " | ".join(line) + " |")
    print(
        "\nPeak GiB: the measuring process's peak resident memory, data included; (+eval): what the evaluation added"
        f" above the peak before it{'; simlearn on cuda: its GPU peak' if args.device == 'cuda' else ''}."
        f" Speed-up: PML's wall time over simlearn {args.backends[0]}'s. GEMM floor: the float32 dot products of all"
        " query × gallery pairs alone (no selection, no metrics) on the same device, which any exact search"
        " computes; PML's time over it bounds what an exact method can gain there."
    )
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
