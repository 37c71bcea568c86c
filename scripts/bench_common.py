"""What the benchmark scripts share: running one measurement in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys


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
