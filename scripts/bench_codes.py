"""Binary codes (``head=hash``) against float embeddings: search speed and memory, and retrieval quality on MNIST.

    python scripts/bench_codes.py --mnist-root /work/shared/data          # both tables
    python scripts/bench_codes.py --sizes 100000 1000000                  # speed rows only
    python scripts/bench_codes.py --skip-speed --mnist-root /work/shared/data --bits 64 --split closed

**Speed rows** (random data: speed does not depend on what the vectors mean): a gallery of n random codes
(``--code-bits``) or unit float vectors (d = ``--dims``) and ``--queries`` fresh queries of the same kind, each
method in a fresh interpreter (:func:`bench_common.measure_in_subprocess`): exact Hamming search by faiss
``IndexBinaryFlat`` as it ships (heap k-selection), by simlearn's :func:`~simlearn.retrieval.codes.hamming_top_k`
(faiss's counting k-selection when installed) and by its numpy fallback (``backend="numpy"``), exact float search by
faiss ``IndexFlatIP`` and by simlearn's :func:`~simlearn.retrieval.top_k` (float64 re-scoring and the tie rule), the
k = ``--k`` nearest. "batched ms / query": the best of ``--repeats`` calls with all queries, its wall time over the
number of queries; "single ms / query": the mean of ``--single`` calls of one query each; "gallery MiB": the
searched array's bytes; "build s": faiss's ``add`` (simlearn's searches build nothing); "load": the 1-minute load
average when the row started. ``--threads`` sets faiss's and torch's threads (default: theirs, all cores). The
headline is the float/Hamming ratio of the batched time at each size, 64-d floats against 64-bit codes (the first
``--dims`` and ``--code-bits``), measured **side by side**: both galleries in one interpreter, the searches in
alternating rounds, the best of ``--repeats`` each, so that a change in the machine's load hits both.

**Quality rows**: real MNIST, ``--split closed`` (all ten digits in training and test, MNIST's official test
images), ``unseen`` (``data.split_by=class``: training on the digits 0-4, testing on the never-seen 5-9, the loss
comparison's protocol) or ``both``; a model trained inside the script (``simlearn.train``: the small CNN,
``head=hash head.bits=B`` with each ``--quantization`` weight, ``--epochs`` over at most ``--max-train`` training
images, tested on at most ``--max-test`` test images), its test split searched against itself (leave-one-out) four
ways: the float embedding of the same network (the head's tanh relaxation, L2-normalised:
:func:`simlearn.evaluation.retrieval_metrics`), its packed codes by Hamming distance
(:func:`simlearn.evaluation.hamming.hamming_metrics`: by the tie rule and tie-aware), and the Hamming ranking whose
top ``--rerank`` (and, an extra column, ``--rerank-deep``) candidates are re-ranked by the float embeddings
(:meth:`simlearn.retrieval.CodeIndex.reranking` through :func:`~simlearn.retrieval.top_k`; the places past them keep
their Hamming order; MAP@R reads R places, R ≈ 500 closed-set and ≈ 1000 unseen at 5,000 test images, which the top
100 do not cover). "kept" is the share of the float MAP@R. Figures are wall-clock on whatever machine runs it; on a
shared machine they are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import measure_in_subprocess, peak_rss_bytes  # noqa: E402
from bench_postprocess import trained_embeddings  # noqa: E402

#: the searches timed: (name, kind of gallery)
METHODS = {
    "faiss IndexBinaryFlat": "codes",
    "simlearn hamming_top_k": "codes",
    "simlearn hamming_top_k numpy": "codes",
    "faiss IndexFlatIP": "floats",
    "simlearn top_k": "floats",
}
#: the headline pairs (float search, Hamming search), timed side by side in one interpreter
HEADLINE = (
    ("faiss IndexFlatIP", "faiss IndexBinaryFlat"),
    ("faiss IndexFlatIP", "simlearn hamming_top_k"),
    ("simlearn top_k", "simlearn hamming_top_k"),
)
LOSSES = ("contrastive", "csq")


def random_gallery(kind: str, n: int, width: int, seed: int) -> np.ndarray:
    """n random packed codes of ``width`` bits, or n random unit float32 rows of dimension ``width``."""
    rng = np.random.default_rng([seed, n, width])
    if kind == "codes":
        return rng.integers(0, 256, (n, width // 8), dtype=np.uint8)
    x = rng.standard_normal((n, width), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def searcher(method: str, gallery: np.ndarray, k: int):
    """``(build seconds, search(queries))`` of one method over the gallery. "faiss IndexBinaryFlat" is faiss as it
    ships (its heap k-selection); simlearn's ``hamming_top_k`` runs on faiss's counting k-selection when faiss is
    installed, its "numpy" row on numpy's popcount (``backend="numpy"``)."""
    from simlearn.retrieval import hamming_top_k, prepare_gallery, top_k

    started = time.perf_counter()
    if method.startswith("faiss"):
        import faiss

        if method == "faiss IndexBinaryFlat":
            index = faiss.IndexBinaryFlat(gallery.shape[1] * 8)
        else:
            index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(gallery)
        return time.perf_counter() - started, lambda q: index.search(q, k)
    if method == "simlearn hamming_top_k":
        return 0.0, lambda q: hamming_top_k(q, gallery, k)
    if method == "simlearn hamming_top_k numpy":
        return 0.0, lambda q: hamming_top_k(q, gallery, k, backend="numpy")
    prepared = prepare_gallery(gallery)  # checked and normalised once, as a served gallery is
    return 0.0, lambda q: top_k(q, prepared, k)


def speed_worker(spec: dict) -> dict:
    """Methods at one size, side by side: each builds its gallery, then ``repeats`` rounds of one batched search by
    each method in turn (the best round counts: the least disturbed by other jobs), then ``single`` one-query
    searches each; per method its times and bytes, and the process's peak memory."""
    if spec["threads"]:
        import faiss
        import torch

        faiss.omp_set_num_threads(spec["threads"])
        torch.set_num_threads(spec["threads"])
    searches, out = {}, {}
    for method, width in spec["methods"]:
        kind = METHODS[method]
        gallery = random_gallery(kind, spec["n"], width, 0)
        queries = random_gallery(kind, spec["queries"], width, 1)
        build_s, search = searcher(method, gallery, spec["k"])
        search(queries[:2])  # warm-up: thread pools, first allocations
        searches[method] = search, queries
        out[method] = {"build_s": build_s, "batched_s": float("inf"), "bytes": gallery.nbytes}
    for _ in range(spec["repeats"]):
        for method, (search, queries) in searches.items():
            started = time.perf_counter()
            search(queries)
            out[method]["batched_s"] = min(out[method]["batched_s"], time.perf_counter() - started)
    for method, (search, queries) in searches.items():
        started = time.perf_counter()
        for i in range(spec["single"]):
            search(queries[i : i + 1])
        out[method]["single_s"] = (time.perf_counter() - started) / max(1, spec["single"])
    return {"methods": out, "peak_rss": peak_rss_bytes()}


def load_average() -> str:
    """The 1-minute load average now (how busy the machine is: the times are upper bounds when it exceeds the
    cores)."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


def speed_rows(args: argparse.Namespace) -> list[str]:
    """The table (each method alone in a fresh interpreter: its own peak memory) and the headline ratios (float and
    Hamming search side by side in one interpreter, best of ``--repeats`` alternating rounds)."""
    script = os.path.abspath(__file__)
    common = {"queries": args.queries, "k": args.k, "single": args.single, "repeats": args.repeats,
              "threads": args.threads}  # fmt: skip
    rows = [
        f"{os.cpu_count()} cores, threads: {args.threads or 'the libraries default (all cores)'}, k = {args.k}, "
        f"{args.queries} queries batched, best of {args.repeats}; load average at the start {load_average()}",
        "",
        "| gallery | search | batched ms / query | single ms / query | gallery MiB | build s | peak MiB | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in args.sizes:
        runs = [(m, b) for m in args.methods if METHODS[m] == "codes" for b in args.code_bits]
        runs += [(m, d) for m in args.methods if METHODS[m] == "floats" for d in args.dims]
        for method, width in runs:
            what = f"{width}-bit codes" if METHODS[method] == "codes" else f"{width}-d float32"
            load = load_average()
            result = measure_in_subprocess(script, {**common, "methods": [[method, width]], "n": n}, args.timeout)
            if "error" in result:
                rows.append(f"| {n:,} {what} | {method} | {result['error']} | | | | | {load} |")
            else:
                one = result["methods"][method]
                rows.append(
                    f"| {n:,} {what} | {method} | {1000 * one['batched_s'] / args.queries:.4f} | "
                    f"{1000 * one['single_s']:.3f} | {one['bytes'] / 2**20:.1f} | {one['build_s']:.2f} | "
                    f"{result['peak_rss'] / 2**20:.0f} | {load} |"
                )
            print(rows[-1], flush=True)
    rows.append("")
    bits, dim = args.code_bits[0], args.dims[0]
    for n in args.sizes:
        pairs = [p for p in HEADLINE if p[0] in args.methods and p[1] in args.methods]
        methods = sorted({m for p in pairs for m in p}, key=list(METHODS).index)
        spec = {**common, "n": n, "methods": [[m, bits if METHODS[m] == "codes" else dim] for m in methods]}
        load = load_average()
        result = measure_in_subprocess(script, spec, args.timeout)
        if "error" in result:
            rows.append(f"- {n:,} items side by side: {result['error']}")
            continue
        times = {m: result["methods"][m]["batched_s"] for m in methods}
        for floats, codes in pairs:
            rows.append(
                f"- {n:,} items, side by side (load {load}): {floats} of {dim}-d floats "
                f"{1000 * times[floats] / args.queries:.4f} ms / {codes} of {bits}-bit codes "
                f"{1000 * times[codes] / args.queries:.4f} ms per batched query: "
                f"**{times[floats] / times[codes]:.1f}x**"
            )
            print(rows[-1], flush=True)
    rows.append(f"- load average at the end {load_average()}")
    return rows


def reranked_ranker(depth: int):
    """A metrics ranker: the Hamming ranking (the tie rule) whose first ``depth`` candidates are re-ranked by the
    float embeddings through ``CodeIndex.reranking`` (the library's float re-ranking); later places keep the Hamming
    order."""
    import torch

    from simlearn.evaluation.hamming import hamming_ranker
    from simlearn.retrieval import code_index, pack_codes, top_k

    hamming = hamming_ranker()

    def rank(data, needed):
        queries = data.queries.cpu().numpy()
        gallery = None if data.self_search else data.gallery.cpu().numpy()
        codes = pack_codes(queries if gallery is None else gallery)
        index = code_index(codes).reranking(depth)
        head = top_k(queries, gallery, depth, exclude_self=data.self_search, index=index).indices
        for chunk in hamming(data, needed):
            tail = chunk.indices.cpu().numpy()
            first = head[chunk.start : chunk.stop]
            if first.shape[1] >= tail.shape[1]:  # the metrics read no place past the re-ranked candidates
                merged = first[:, : tail.shape[1]]
            else:  # each query: the re-ranked candidates first, then the rest of its Hamming ranking in order
                rest = np.array([row[~np.isin(row, top)] for row, top in zip(tail, first, strict=True)])
                merged = np.concatenate([first, rest], axis=1)[:, : tail.shape[1]]
            yield chunk._replace(indices=torch.from_numpy(merged).to(chunk.indices.device))

    return rank


#: the quality rows' protocols: closed set (every digit trained and tested, MNIST's official test images) and unseen
#: classes (compare_losses's: ``data.split_by=class``, training on the digits 0-4, testing on the never-seen 5-9)
SPLITS = {
    "closed": [],
    "unseen": ["data.split_by=class", "data.train_classes=[0,1,2,3,4]", "data.test_classes=[5,6,7,8,9]"],
}


def quality_rows(args: argparse.Namespace) -> list[str]:
    from simlearn.evaluation import retrieval_metrics
    from simlearn.evaluation.hamming import hamming_metrics

    data = [
        "data=mnist",
        f"data.root={args.mnist_root}",
        "data.download=false",
        "data.m_per_class=32",
        "data.batch_size=160",
        f"data.max_train={args.max_train}",
        f"data.max_test={args.max_test}",
        f"trainer.max_epochs={args.epochs}",
        f"seed={args.seed}",
        "head=hash",
    ]
    rows = [
        f"| split | loss | bits | quantization | float MAP@R | Hamming MAP@R (kept) | tie-aware MAP@R | re-ranked top "
        f"{args.rerank} MAP@R (kept) | re-ranked top {args.rerank_deep} MAP@R (kept) | recall@1 float / Hamming | "
        "mAP@1000 | train + test s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    splits = list(SPLITS) if args.split == "both" else [args.split]
    with tempfile.TemporaryDirectory() as tmp:
        for split in splits:
            for loss in args.losses:
                for bits in args.bits:
                    for weight in args.quantization:
                        out = Path(tmp) / f"{split}-{loss}-{bits}-{weight}"
                        quant = [] if weight is None else [f"head.quantization={weight}"]
                        started = time.perf_counter()
                        overrides = [*data, *SPLITS[split], f"loss={loss}", f"head.bits={bits}", *quant]
                        x, y = trained_embeddings(overrides, out)
                        seconds = time.perf_counter() - started
                        codes = np.load(out / "embeddings.npz")["codes"]
                        flt = retrieval_metrics(x, y, ks=(1,))
                        ham = hamming_metrics(codes, y, ks=(1,))
                        rer = retrieval_metrics(x, y, ks=(1,), rank=reranked_ranker(args.rerank))
                        deep = retrieval_metrics(x, y, ks=(1,), rank=reranked_ranker(args.rerank_deep))
                        base = flt["map@r"]
                        row = (f"| {split} | {loss} | {bits} | {'0.1 (default)' if weight is None else weight} | "
                               f"{base:.4f} | {ham['map@r']:.4f} ({ham['map@r'] / base:.1%}) | "
                               f"{ham['tie_aware/map@r']:.4f} | {rer['map@r']:.4f} ({rer['map@r'] / base:.1%}) | "
                               f"{deep['map@r']:.4f} ({deep['map@r'] / base:.1%}) | "
                               f"{flt['recall@1']:.4f} / {ham['recall@1']:.4f} | {ham['map@1000']:.4f} | "
                               f"{seconds:.0f} |")  # fmt: skip
                        print(row, flush=True)
                        rows.append(row)
    return rows


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(speed_worker(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--code-bits", type=int, nargs="*", default=[64])
    parser.add_argument("--dims", type=int, nargs="*", default=[64, 512])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=20, help="one-query searches timed per method")
    parser.add_argument("--repeats", type=int, default=3, help="batched searches per method; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="faiss's and torch's threads (default: theirs)")
    parser.add_argument("--methods", nargs="*", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--mnist-root", default=None, help="a folder holding MNIST/raw/: adds the quality rows")
    parser.add_argument("--bits", type=int, nargs="*", default=[16, 32, 64])
    parser.add_argument("--losses", nargs="*", default=list(LOSSES))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-train", type=int, default=20000)
    parser.add_argument("--max-test", type=int, default=5000)
    parser.add_argument("--rerank", type=int, default=100, help="re-rank this many Hamming candidates by floats")
    parser.add_argument("--rerank-deep", type=int, default=1000, help="the extra column's re-ranking depth")
    parser.add_argument("--split", choices=[*SPLITS, "both"], default="both", help="the quality rows' protocols")
    parser.add_argument("--quantization", type=float, nargs="*", default=[None],
                        help="head.quantization weights to train with (default: the head config's)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    rows = quality_rows(args) if args.mnist_root else []
    rows += ["", *speed_rows(args)] if args.sizes and not args.skip_speed else []
    print("\n".join(rows))


if __name__ == "__main__":
    main()
