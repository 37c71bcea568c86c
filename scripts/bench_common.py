"""What the benchmark scripts share: running one measurement in a fresh interpreter."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import numpy as np


def measure_in_subprocess(script: str, spec: dict, timeout: float) -> dict:
    """Run ``script --worker <spec as JSON>`` in a fresh interpreter (its own peak memory, no state shared with
    other measurements) and return the JSON object it prints last, or ``{"error": ...}`` when it fails or times
    out."""
    try:
        proc = subprocess.run(
            [sys.executable, script, "--worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def clustered_vectors(
    n: int, d: int, per_class: int, seed: int, noise: float, unit_centres: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """n L2-normalised float32 vectors around n // per_class Gaussian class centres (unit length with
    ``unit_centres``) plus Gaussian noise of ``noise`` per coordinate, and their labels; built in blocks so that
    nothing but the result is ever held in memory. The same arguments give the same data."""
    rng = np.random.default_rng([seed, n, d])
    classes = max(2, n // per_class)
    labels = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, d), dtype=np.float32)
    if unit_centres:
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scale = np.float32(noise)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 65536):
        stop = min(start + 65536, n)
        block = rng.standard_normal((stop - start, d), dtype=np.float32)
        block *= scale
        block += centres[labels[start:stop]]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[start:stop] = block
    return x, labels


#: Overrides of a benchmark's training run: no logger, plots, structure report, progress bar, model summary or sweep
#: metric (what the benchmarks measure is the metrics, not the console).
QUIET_RUN = (
    "logger=none",
    "reports.plots=null",
    "reports.structure=null",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
    "optimized_metric=null",
)
