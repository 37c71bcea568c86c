"""Approximate search through LanceDB against simlearn's exact search: recall@10, query latency, memory.

    python scripts/bench_search.py                                  # 100k and 1M items, d = 128
    python scripts/bench_search.py --sizes 100000 --queries 500     # a quicker run
    python scripts/bench_search.py --sizes 1000000 --partitions 1000 --settings 20:10 50:20

For each size the gallery is random but clustered unit vectors (random unit class centres plus Gaussian noise of norm
``--noise``, L2-normalised, about ``--per-class`` items per class: items of one class have a cosine of about 0.6 like
a trained model's, other classes about 0), written with
:func:`simlearn.retrieval.vectordb.write_embeddings` into a LanceDB table (with its labels) and indexed with IVF_PQ
for the dot
product (``--partitions``, default about sqrt(n); ``--sub-vectors``, default d/8). The queries are fresh items from the
same distribution. Then, in a fresh subprocess that only reads the database (so that its peak memory is what a search
service holding that gallery needs):

* the gallery is prepared once (:func:`~simlearn.retrieval.inputs.prepare_gallery`), as ``simlearn-search`` and
  the service do;
* the ground truth: simlearn's exact top 10 (:func:`simlearn.retrieval.exact.top_k`, float64 cosines, ties to
  the lower index);
* for every ``nprobes:refine_factor`` setting, the search through the index exactly as ``simlearn-search`` does it
  (LanceDB's candidates, re-scored and ordered by simlearn): recall@10 against the exact top 10 (the share of the
  exact 10 found), and the latency of single-query calls (p50, p99), also of LanceDB's own query alone;
* the latency of the exact search: simlearn's in memory, and LanceDB's full scan (``db_search=exact``).

Figures are wall-clock on whatever machine runs it; on a shared machine they are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import clustered_vectors, measure_in_subprocess, peak_rss_bytes

K = 10


def make_data(n: int, d: int, per_class: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n unit float32 vectors around n // per_class random unit class centres (their labels), each the centre plus
    Gaussian noise of norm about ``noise``, normalised: two items of a class have a cosine of about
    1 / (1 + noise**2), items of different classes about 0."""
    return clustered_vectors(n, d, per_class, seed, noise / math.sqrt(d), unit_centres=True)


def rss_bytes() -> int:
    """The resident set size of this process now (Linux; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def build(spec: dict) -> dict:
    """Write the gallery and its IVF_PQ index; the queries go next to it (an npy file)."""
    from simlearn.retrieval import vectordb

    n, d = spec["n"], spec["dim"]
    x, labels = make_data(n + spec["queries"], d, spec["per_class"], spec["noise"], spec["seed"])
    np.save(Path(spec["db"]).with_suffix(".queries.npy"), x[n:])
    gallery = {"embeddings": x[:n], "index": np.arange(n), "labels": labels[:n], "label_field": np.array("class")}
    start = time.perf_counter()
    table = vectordb.write_embeddings(spec["db"], {"gallery": gallery}, None, overwrite=True)
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    built = vectordb.create_index(table, "IVF_PQ", spec["partitions"], spec["sub_vectors"])
    index_s = time.perf_counter() - start
    size = sum(f.stat().st_size for f in Path(spec["db"]).rglob("*") if f.is_file())
    return {"write_s": write_s, "index_s": index_s, "index": built, "disk_mb": size / 2**20}


def search(spec: dict) -> dict:
    """Read the database as simlearn-search does, then measure the exact and the approximate searches."""
    from simlearn.retrieval import vectordb
    from simlearn.retrieval.exact import top_k
    from simlearn.retrieval.inputs import prepare_gallery

    queries = np.load(Path(spec["db"]).with_suffix(".queries.npy"))
    import lancedb  # noqa: F401 (imported before the baseline is read: its libraries are no gallery memory)

    baseline = rss_bytes()
    start = time.perf_counter()
    contents = vectordb.read_table(spec["db"])
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    gallery = prepare_gallery(contents.embeddings)  # once, as simlearn-search and the service do
    prepare_s = time.perf_counter() - start
    out: dict = {
        "load_s": load_s,
        "prepare_s": prepare_s,
        "rss_baseline_mb": baseline / 2**20,
        "rss_after_load_mb": rss_bytes() / 2**20,
    }
    start = time.perf_counter()
    exact = top_k(queries, gallery, K)
    out["exact_batch_ms_per_query"] = (time.perf_counter() - start) * 1000 / len(queries)
    single = [q[None] for q in queries[: spec["latency_queries"]]]
    times = []
    for q in single:
        start = time.perf_counter()
        top_k(q, gallery, K)
        times.append(time.perf_counter() - start)
    out["exact_memory"] = percentiles(times)
    scan = vectordb.candidates(contents, "exact")
    times = []
    for q in single[: spec["scan_queries"]]:
        start = time.perf_counter()
        top_k(q, gallery, K, index=scan)
        times.append(time.perf_counter() - start)
    out["exact_lancedb_scan"] = percentiles(times)
    out["settings"] = []
    truth = [set(row) for row in exact.indices.tolist()]
    for setting in spec["settings"]:
        nprobes, refine = (int(v) if v not in ("", "none") else None for v in setting.split(":"))
        source = vectordb.candidates(contents, "index", nprobes, refine)
        start = time.perf_counter()
        ann = top_k(queries, gallery, K, index=source)
        batch_ms = (time.perf_counter() - start) * 1000 / len(queries)
        recall = float(np.mean([len(t & set(a)) / K for t, a in zip(truth, ann.indices.tolist(), strict=True)]))
        same_order = float(np.mean(np.all(ann.indices == exact.indices, axis=1)))
        through, raw = [], []
        for q in single:
            start = time.perf_counter()
            top_k(q, gallery, K, index=source)
            through.append(time.perf_counter() - start)
            start = time.perf_counter()
            source.index.search(q, K)
            raw.append(time.perf_counter() - start)
        out["settings"].append(
            {
                "nprobes": nprobes,
                "refine_factor": refine,
                "recall@10": recall,
                "exact_top10_share": same_order,
                "batch_ms_per_query": batch_ms,
                "simlearn": percentiles(through),
                "lancedb_only": percentiles(raw),
            }
        )
    out["peak_rss_mb"] = peak_rss_bytes() / 2**20
    out["rss_end_mb"] = rss_bytes() / 2**20
    out["gallery_mb"] = contents.embeddings.nbytes / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall (batched)")
    parser.add_argument("--latency-queries", type=int, default=200, help="single-query calls timed")
    parser.add_argument("--scan-queries", type=int, default=30, help="single queries through LanceDB's full scan")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.8, help="noise norm around a class centre (cos ~0.6 within)")
    parser.add_argument("--partitions", type=int, default=None, help="IVF partitions (default: about sqrt(n))")
    parser.add_argument("--sub-vectors", type=int, default=None, help="PQ sub-vectors (default: dim / 8)")
    parser.add_argument("--settings", nargs="+", default=["10:4", "20:10", "50:20"], help="nprobes:refine_factor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where the databases go (default: a temp dir, removed)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(build(spec) if spec["phase"] == "build" else search(spec)))
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_search_"))
    results = []
    try:
        for n in args.sizes:
            spec = {
                "n": n,
                "dim": args.dim,
                "queries": args.queries,
                "latency_queries": args.latency_queries,
                "scan_queries": args.scan_queries,
                "per_class": args.per_class,
                "noise": args.noise,
                "partitions": args.partitions or int(round(math.sqrt(n))),
                "sub_vectors": args.sub_vectors or max(1, args.dim // 8),
                "settings": args.settings,
                "seed": args.seed,
                "db": str(workdir / f"gallery_{n}.lancedb"),
            }
            built = measure_in_subprocess(__file__, {**spec, "phase": "build"}, args.timeout)
            searched = (
                {} if "error" in built else measure_in_subprocess(__file__, {**spec, "phase": "search"}, args.timeout)
            )
            result = {"n": n, "dim": args.dim, "partitions": spec["partitions"], "sub_vectors": spec["sub_vectors"]}
            result.update(build=built, search=searched)
            results.append(result)
            print(json.dumps(result), flush=True)
            report(result)
            shutil.rmtree(spec["db"], ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def report(result: dict) -> None:
    """The markdown rows of one size."""
    built, searched = result["build"], result["search"]
    if "error" in built or "error" in searched:
        print(f"n={result['n']}: {built.get('error') or searched.get('error')}", file=sys.stderr)
        return
    print(
        f"\nn={result['n']:,} d={result['dim']}: written in {built['write_s']:.1f} s, {built['index']} built in "
        f"{built['index_s']:.1f} s, {built['disk_mb']:.0f} MB on disk; the searching process: "
        f"{searched['rss_baseline_mb']:.0f} MB resident after its imports, {searched['rss_after_load_mb']:.0f} MB with "
        f"the gallery loaded ({searched['load_s']:.1f} s, prepared in {searched['prepare_s']:.2f} s; vectors "
        f"{searched['gallery_mb']:.0f} MB), "
        f"{searched['rss_end_mb']:.0f} MB after searching (LanceDB's index cache), "
        f"peak {searched['peak_rss_mb']:.0f} MB"
    )
    print("| search | recall@10 | p50 ms | p99 ms | LanceDB alone p50 / p99 ms | batched ms/query |")
    print("| --- | --- | --- | --- | --- | --- |")
    mem, scan = searched["exact_memory"], searched["exact_lancedb_scan"]
    print(
        f"| exact, simlearn in memory | 1 | {mem['p50_ms']:.1f} | {mem['p99_ms']:.1f} | | "
        f"{searched['exact_batch_ms_per_query']:.2f} |"
    )
    print(f"| exact, LanceDB full scan (db_search=exact) | 1 | {scan['p50_ms']:.1f} | {scan['p99_ms']:.1f} | | |")
    for s in searched["settings"]:
        raw = s["lancedb_only"]
        print(
            f"| IVF_PQ nprobes={s['nprobes']} refine_factor={s['refine_factor']} | {s['recall@10']:.4f} | "
            f"{s['simlearn']['p50_ms']:.1f} | {s['simlearn']['p99_ms']:.1f} | {raw['p50_ms']:.1f} / "
            f"{raw['p99_ms']:.1f} | {s['batch_ms_per_query']:.2f} |"
        )


if __name__ == "__main__":
    os.environ.setdefault("LANCEDB_LOG", "error")
    main()
