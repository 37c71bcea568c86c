"""The benchmark scripts run end to end on tiny sizes (timings are theirs to report, not the tests')."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

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


@pytest.mark.slow
def test_bench_label_free_fine_tunes_few_labels_from_the_label_free_row(tmp_path):
    done = run_cli(
        "scripts/bench_label_free.py", "--datasets", "digits", "--rows", "simclr", "few", "--fractions", "0.1",
        "--epochs", "1", "--max-train", "200", "--max-test", "100", "--out", str(tmp_path), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "digits" / "results.json").read_text())
    assert results["best"] == "simclr"
    assert list(results["rows"]) == ["simclr", "cosine 10% scratch", "cosine 10% fine-tuned from simclr"]
    for row, metrics in results["rows"].items():
        assert 0.0 <= metrics["test/map@r"] <= 1.0 and metrics["train/wall_s"] > 0, row
        assert f"| {row} |" in done.stdout
    # the simclr row trained without labels; the fine-tuned row starts from its best checkpoint, the scratch row not
    runs = tmp_path / "digits"
    assert json.loads((runs / "simclr" / "splits.json").read_text())["labels"] == "none"
    scratch = OmegaConf.load(runs / "cosine_10pc_scratch" / "config.yaml")
    tuned = OmegaConf.load(runs / "cosine_10pc_fine-tuned" / "config.yaml")
    assert scratch.init_from is None and Path(tuned.init_from).parent == runs / "simclr" / "checkpoints"
    assert scratch.trainer.max_epochs == tuned.trainer.max_epochs == 10  # the images of 1 epoch on 10 % of them
    kept = json.loads((runs / "cosine_10pc_scratch" / "splits.json").read_text())["splits"]["train"]
    assert 0 < len(kept["labelled_items"]) < kept["num_items_before_label_fraction"] // 5


@pytest.mark.slow
def test_bench_codes_speed_rows_time_every_search_and_the_side_by_side_headline():
    done = run_cli(
        "scripts/bench_codes.py", "--sizes", "3000", "--dims", "16", "--code-bits", "16", "--queries", "50",
        "--single", "2", "--repeats", "2", "--threads", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    # each row printed as it is measured, then in the whole table
    rows = list(dict.fromkeys(line for line in done.stdout.splitlines() if line.startswith("| 3,000 ")))
    assert [row.split("|")[2].strip() for row in rows] == [
        "faiss IndexBinaryFlat", "simlearn hamming_top_k", "simlearn hamming_top_k numpy", "faiss IndexFlatIP",
        "simlearn top_k",
    ]  # fmt: skip
    assert all(float(row.split("|")[3]) > 0 for row in rows)  # a time, not an error
    headline = list(dict.fromkeys(line for line in done.stdout.splitlines() if line.startswith("- 3,000 items, side")))
    assert len(headline) == 3 and all(line.endswith("x**") for line in headline)


def test_bench_codes_reranking_deeper_than_the_metrics_read_is_the_float_ranking():
    """Re-ranking at least every item by floats gives the float search's metrics (it failed when the depth exceeded
    the places the metrics read)."""
    import importlib.util

    import numpy as np

    from simlearn.evaluation import retrieval_metrics

    spec = importlib.util.spec_from_file_location("bench_codes", Path(__file__).parents[1] / "scripts/bench_codes.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    x = (rng.normal(size=(200, 16)) + 2 * rng.normal(size=(4, 16))[labels]).astype(np.float32)
    want = retrieval_metrics(x, labels, ks=(1, 5))
    got = retrieval_metrics(x, labels, ks=(1, 5), rank=bench.reranked_ranker(300))
    assert got == pytest.approx(want, abs=1e-12)
    shallow = retrieval_metrics(x, labels, ks=(1, 5), rank=bench.reranked_ranker(5))
    assert shallow["map@r"] != pytest.approx(want["map@r"], abs=1e-3)  # places past 5 keep the Hamming order
