"""The benchmark scripts run end to end on tiny sizes (timings are theirs to report, not the tests')."""

from __future__ import annotations

import pytest

from tests.helpers import run_cli

pytest.importorskip("faiss")


@pytest.mark.slow
def test_bench_eval_backends_agree_with_pml_and_report_the_gemm_floor():
    done = run_cli(
        "scripts/bench_eval.py", "--sizes", "3000", "--dims", "16", "--per-class", "30", "--backends", "torch", "faiss"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("| 3,000 | 16 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-1].startswith("yes")  # both backends equal PML's metrics to the tolerance
    assert 0.05 < float(cells[-2]) < 0.95  # MAP@R of the clustered data: neither trivial nor hopeless
    assert all(c not in ("failed", "skipped") for c in cells)  # PML and the GEMM floor ran too


@pytest.mark.slow
def test_bench_train_measures_every_loop(mnist_root):
    done = run_cli(
        "scripts/bench_train.py",
        "--data-root",
        str(mnist_root),
        "--steps",
        "4",
        "--warmup",
        "1",
        "--variants",
        "simlearn",
        "bare",
        "torchvision",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| (")]
    assert [row[2:5] for row in rows] == ["(a)", "(b)", "(c)"]
    assert all(float(row.split("|")[2]) > 0 for row in rows)  # images/s of each loop
    assert "(a)/(b) = " in done.stdout and "(a)/(c) = " in done.stdout
