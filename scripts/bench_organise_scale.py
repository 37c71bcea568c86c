"""Organising a catalogue at scale: near-duplicate search, clustering and uniqueness at 100k and 1M items.

    python scripts/bench_organise_scale.py                                   # 100k and 1M, the defaults below
    python scripts/bench_organise_scale.py --sizes 100000 --k 100 --json scale.json --markdown scale.md

**The data** (random, so that it can be any size; :func:`bench_common.clustered_vectors`): n unit vectors of
dimension ``--dim`` (128) around ``--centres`` (1,000) random unit centres, each a centre plus Gaussian noise of
``--spread`` (0.05) per coordinate, normalised (cos to its centre about 0.87, between two items of one centre about
0.76, so that no two independent items come near a copy's cosine). Then ``--dup-share`` (1 %) of the items are
replaced by planted near-duplicates of as many other items, at a cosine drawn uniformly from ``--dup-cos`` (0.995 to
0.9999) from their source. The same arguments give the same data.

**The measurements**, each in a fresh interpreter (:func:`bench_common.measure_in_subprocess`: its own peak memory),
through the library's functions as ``simlearn-organise`` calls them:

* ``baseline``: the data made and the libraries imported, nothing else: the peak RSS the others are compared with;
* ``exact``: :func:`~simlearn.organise.find_duplicates` by the exact chunked search at ``--threshold`` (0.99: every
  planted pair is above it), then :func:`~simlearn.organise.uniqueness` (``--uniqueness-k``) exactly, as the command
  does up to ``exact_limit`` items; above ``--exact-max`` items (200,000) only ``exact-sample``;
* ``exact-sample``: the exact pairs of ``--sample`` random items (their ``--max-neighbours`` nearest others by
  :func:`~simlearn.retrieval.top_k`, those at the threshold or above): the reference for the index at sizes where
  the full exact search takes hours; its time times n / sample estimates the full exact search's;
* ``ann``: the faiss index (``--factories``, HNSW32 by default) built by
  :func:`~simlearn.organise.duplicates.neighbour_index`, the pairs found through it, and uniqueness through the same
  index, as the command does beyond ``exact_limit``; "exact pairs found": the share of the exact pairs (all of them,
  or those of the sampled items) it finds;
* ``kmeans k=K`` (``--k``): :func:`~simlearn.organise.cluster_embeddings`, spherical k-means through faiss with its
  default restarts, and its NMI against the centres the items were drawn around;
* ``hdbscan``: at ``--hdbscan-sizes`` (its time grows as n²) and at each ``--sizes`` (above
  :data:`~simlearn.organise.clusters.HDBSCAN_LIMIT` it is refused with one line: the line is the result).

"peak MiB" is the process's peak RSS (:func:`bench_common.peak_rss_bytes`), "+MiB" that minus the baseline's at the
same n. Figures are wall-clock on whatever machine runs it; on a shared machine they are upper bounds.
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

from bench_common import clustered_vectors, measure_in_subprocess, peak_rss_bytes  # noqa: E402


def catalogue(spec: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The items (n, dim) float32 unit rows, their centres (n,) and the planted pairs (P, 2) ``(i < j)``."""
    n, d = spec["n"], spec["dim"]
    x, centres = clustered_vectors(n, d, max(1, n // spec["centres"]), spec["seed"], spec["spread"], unit_centres=True)
    rng = np.random.default_rng([spec["seed"], n, d, 1])
    m = int(round(spec["dup_share"] * n))
    chosen = rng.choice(n, 2 * m, replace=False)
    sources, copies = chosen[:m], chosen[m:]
    cos = rng.uniform(*spec["dup_cos"], m)
    # a copy: cos along its source plus sin along a random direction orthogonal to it (an exact cosine)
    src = x[sources].astype(np.float64)
    other = rng.standard_normal((m, d))
    other -= np.einsum("ij,ij->i", other, src)[:, None] * src
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    x[copies] = (cos[:, None] * src + np.sqrt(1 - cos**2)[:, None] * other).astype(np.float32)
    centres[copies] = centres[sources]
    planted = np.sort(np.stack([sources, copies], axis=1), axis=1)
    return x, centres, planted


def worker(spec: dict) -> dict:
    """One measurement (``spec["task"]``) on the catalogue of ``spec``; pairs go to ``spec["out"]`` as .npy."""
    from simlearn.errors import UserError
    from simlearn.organise import cluster_embeddings, find_duplicates, uniqueness
    from simlearn.organise.duplicates import neighbour_index
    from simlearn.retrieval import top_k

    x, centres, planted = catalogue(spec)
    task, out = spec["task"], Path(spec["out"])
    result: dict = {"data_mib": x.nbytes / 2**20}
    started = time.perf_counter()
    if task == "exact":
        found = find_duplicates(x, spec["threshold"], spec["max_neighbours"], exact_limit=len(x))
        result.update(seconds=time.perf_counter() - started, peak_rss=peak_rss_bytes(), method=found.method)
        np.save(out / f"exact_{len(x)}.npy", found.pairs)
        result.update(pairs=len(found.pairs), groups=len(found.groups))
        started = time.perf_counter()
        unusual = uniqueness(x, spec["uniqueness_k"], exact_limit=len(x))
        result.update(uniqueness_seconds=time.perf_counter() - started, uniqueness_peak_rss=peak_rss_bytes())
        result["uniqueness_exact"] = unusual.exact
        np.save(out / f"uniqueness_{len(x)}.npy", unusual.score)
    elif task == "exact-sample":
        sample = np.sort(np.random.default_rng([spec["seed"], 2]).choice(len(x), spec["sample"], replace=False))
        k = spec["max_neighbours"]
        found = top_k(x[sample], x, k + 1)  # the item itself is among its k + 1 nearest (cos 1): dropped below
        seconds = time.perf_counter() - started
        own = found.indices == sample[:, None]
        keep = (found.similarities >= spec["threshold"]) & ~own
        rows = np.repeat(sample, k + 1).reshape(own.shape)
        pairs = np.unique(np.sort(np.stack([rows[keep], found.indices[keep]], axis=1), axis=1), axis=0)
        np.save(out / f"sample_{len(x)}.npy", sample)
        np.save(out / f"exact_sample_{len(x)}.npy", pairs)
        result.update(seconds=seconds, peak_rss=peak_rss_bytes(), pairs=len(pairs), sample=len(sample),
                      estimated_full_seconds=seconds * len(x) / len(sample),
                      saturated=int((keep.sum(axis=1) >= k).sum()))  # fmt: skip
    elif task == "ann":
        index = neighbour_index(x, exact_limit=0, index_factory=spec["factory"])
        result["build_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        found = find_duplicates(x, spec["threshold"], spec["max_neighbours"], index=index)
        result.update(seconds=time.perf_counter() - started, peak_rss=peak_rss_bytes(), method=found.method)
        np.save(out / f"ann_{spec['factory']}_{len(x)}.npy", found.pairs)
        result.update(pairs=len(found.pairs), groups=len(found.groups))
        started = time.perf_counter()
        unusual = uniqueness(x, spec["uniqueness_k"], index=index)
        result.update(uniqueness_seconds=time.perf_counter() - started, uniqueness_peak_rss=peak_rss_bytes())
        np.save(out / f"ann_uniqueness_{spec['factory']}_{len(x)}.npy", unusual.score)
    elif task in ("kmeans", "hdbscan"):
        try:
            clusters = cluster_embeddings(x, k=spec.get("k"), method=task, labels=centres)
        except UserError as error:
            return {"refused": str(error), "seconds": time.perf_counter() - started, "peak_rss": peak_rss_bytes()}
        result.update(seconds=time.perf_counter() - started, peak_rss=peak_rss_bytes(), nmi=clusters.metrics["nmi"],
                      clusters=len(clusters.centres), noise=int((clusters.cluster < 0).sum()))  # fmt: skip
    else:  # baseline: the data and the libraries only
        result.update(seconds=time.perf_counter() - started, peak_rss=peak_rss_bytes())
    result["planted"] = len(planted)
    return result


def found_share(found: np.ndarray, reference: np.ndarray) -> float:
    """The share of the ``reference`` pairs (P, 2) that are among the ``found`` ones."""
    if len(reference) == 0:
        return float("nan")
    keys = {(int(a), int(b)) for a, b in found}
    return sum((int(a), int(b)) in keys for a, b in reference) / len(reference)


def measure(args: argparse.Namespace, out: Path) -> list[dict]:
    """Every measurement of ``args``, each in a fresh interpreter; one dict per row of the table."""
    common = {"dim": args.dim, "centres": args.centres, "spread": args.spread, "dup_share": args.dup_share,
              "dup_cos": args.dup_cos, "seed": args.seed, "threshold": args.threshold,
              "max_neighbours": args.max_neighbours, "uniqueness_k": args.uniqueness_k, "sample": args.sample,
              "out": str(out)}  # fmt: skip
    runs = []
    for n in args.sizes:
        runs += [("baseline", n, {}), ("exact" if n <= args.exact_max else "exact-sample", n, {})]
        runs += [("ann", n, {"factory": f}) for f in args.factories]
        runs += [("kmeans", n, {"k": k}) for k in args.k]
    runs += [("hdbscan", n, {}) for n in [*args.hdbscan_sizes, *args.sizes]]
    if args.tasks:
        runs = [run for run in runs if run[0] in args.tasks]
    rows, baseline = [], {}
    for task, n, extra in runs:
        spec = {**common, **extra, "task": task, "n": n}
        result = measure_in_subprocess(os.path.abspath(__file__), spec, args.timeout)
        row = {"task": task, "n": n, **extra, **result}
        if task == "baseline" and "peak_rss" in result:
            baseline[n] = result["peak_rss"]
        if "peak_rss" in result and n in baseline:
            row["over_baseline"] = result["peak_rss"] - baseline[n]
        if task == "ann" and "error" not in result:
            _, _, planted = catalogue({**spec})
            pairs = np.load(out / f"ann_{extra['factory']}_{n}.npy")
            row["planted_found"] = found_share(pairs, planted)
            if (out / f"exact_{n}.npy").exists():
                exact = np.load(out / f"exact_{n}.npy")
                row["exact_found"], row["reference"] = found_share(pairs, exact), f"all {len(exact):,} exact pairs"
                ref = np.load(out / f"uniqueness_{n}.npy")
                got = np.load(out / f"ann_uniqueness_{extra['factory']}_{n}.npy")
                row["uniqueness_same"] = float(np.mean(np.abs(got - ref) <= 1e-9))
                row["uniqueness_max_error"] = float(np.abs(got - ref).max())
            elif (out / f"exact_sample_{n}.npy").exists():
                sample = np.load(out / f"sample_{n}.npy")
                exact = np.load(out / f"exact_sample_{n}.npy")
                mine = pairs[np.isin(pairs[:, 0], sample) | np.isin(pairs[:, 1], sample)]
                row["exact_found"] = found_share(pairs, exact)
                row["reference"] = f"the {len(exact):,} exact pairs of {len(sample):,} sampled items"
                row["not_in_exact"] = len(mine) - round(row["exact_found"] * len(exact))
        if task == "exact" and "error" not in result:
            _, _, planted = catalogue({**spec})
            row["planted_found"] = found_share(np.load(out / f"exact_{n}.npy"), planted)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def mib(value: float | None) -> str:
    return "" if value is None else f"{value / 2**20:,.0f}"


def table(rows: list[dict]) -> list[str]:
    """The markdown table of the rows of :func:`measure`."""
    lines = [
        "| n | measurement | wall s | peak MiB | +MiB | pairs | exact pairs found | planted found | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        what = row["task"] + (f" k={row['k']}" if "k" in row else "")
        what += f" {row['factory']}" if "factory" in row else ""
        notes = []
        if "error" in row:
            notes.append(row["error"])
        if "refused" in row:
            notes.append(f"refused: {row['refused']}")
        seconds = f"{row['seconds']:.1f}" if "seconds" in row else ""
        if "build_seconds" in row:
            seconds = f"{row['build_seconds']:.0f} build + {row['seconds']:.0f} search"
        if "uniqueness_seconds" in row:
            notes.append(f"uniqueness (k=5) {row['uniqueness_seconds']:.0f} s, peak {mib(row['uniqueness_peak_rss'])}"
                         " MiB after it")  # fmt: skip
        if "estimated_full_seconds" in row:
            notes.append(f"{row['sample']:,} sampled items; the full exact search ≈ "
                         f"{row['estimated_full_seconds'] / 60:.0f} min; {row['saturated']} items with all "
                         f"neighbours above the threshold")  # fmt: skip
        if "nmi" in row:
            notes.append(f"NMI {row['nmi']:.3f} against the centres, {row['clusters']} clusters"
                         + (f", {row['noise']:,} noise" if row["task"] == "hdbscan" else ""))  # fmt: skip
        if "reference" in row:
            notes.append(f"against {row['reference']}")
        if "not_in_exact" in row:
            notes.append(f"{row['not_in_exact']} of its pairs of sampled items not in the exact ones")
        if "uniqueness_max_error" in row:
            notes.append(f"uniqueness equal to the exact for {row['uniqueness_same']:.2%} of the items (at most "
                         f"{row['uniqueness_max_error']:.2g} off)")  # fmt: skip
        if row["task"] == "baseline":
            notes.append(f"the data: {row.get('data_mib', 0):.0f} MiB")
        share = {key: f"{row[key]:.4f}" if key in row else "" for key in ("exact_found", "planted_found")}
        lines.append(
            f"| {row['n']:,} | {what} | {seconds} | {mib(row.get('peak_rss'))} | {mib(row.get('over_baseline'))} | "
            f"{row.get('pairs', '')} | {share['exact_found']} | {share['planted_found']} | {'; '.join(notes)} |"
        )
    return lines


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--centres", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.05, help="Gaussian noise per coordinate around a centre")
    parser.add_argument("--dup-share", type=float, default=0.01, help="the share of items that are planted copies")
    parser.add_argument("--dup-cos", type=float, nargs=2, default=[0.995, 0.9999])
    parser.add_argument("--threshold", type=float, default=0.99)
    parser.add_argument("--max-neighbours", type=int, default=32)
    parser.add_argument("--uniqueness-k", type=int, default=5)
    parser.add_argument("--exact-max", type=int, default=200_000, help="above it only the sampled exact search")
    parser.add_argument("--sample", type=int, default=5000, help="items whose exact pairs are the reference above it")
    parser.add_argument("--factories", nargs="*", default=["HNSW32"], help="faiss index_factory strings")
    parser.add_argument("--k", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--hdbscan-sizes", type=int, nargs="*", default=[5000, 10_000, 20_000])
    parser.add_argument("--tasks", nargs="*", default=None, help="only these (e.g. baseline kmeans); default all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--markdown", default=None, help="write the table here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args, Path(tmp))
    lines = table(rows)
    load = os.getloadavg()
    lines += ["", f"load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)"]
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "load": load}, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
