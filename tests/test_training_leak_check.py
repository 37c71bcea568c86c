"""The leak check of a training run (``reports.leaks``, simlearn/reports/leaks.py): off by default; on, the run warns
and writes leaks.csv naming a test file that is a near-copy of a training file under another name."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from .helpers import run_main
from .serving import planted_image_csv
from .test_errors import assert_clean_failure


def test_off_by_default_no_leaks_file(trained_run):
    assert (trained_run / "metrics.json").is_file() and not (trained_run / "leaks.csv").exists()


def planted_csv(root: Path) -> tuple[Path, Path, Path]:
    """image_csv data of digit PNGs (of each digit's 8 files: 2 in test, 2 in val, the others in train) and a test
    file that is a 2 % brighter copy of a training file: the CSV, the training file, the copy."""
    return planted_image_csv(root, 8, {0: "test", 1: "test", 2: "val", 3: "val"}, 1.02)


def train(capfd, table: Path, out: Path, *overrides: str):
    return run_main(
        "simlearn.cli.train",
        "data=image_csv",
        f"data.csv={table}",
        "data.channels=1",
        "data.image_size=16",
        "data.num_workers=0",
        "augment=none",
        "trainer.max_epochs=1",
        "logger=none",
        "evaluation.ks=[1,5]",
        "reports.plots=null",
        f"hydra.run.dir={out}",
        *overrides,
        capfd=capfd,
    )


@pytest.mark.slow
def test_the_leak_check_names_both_files_and_warns(tmp_path, capfd):
    table, source, copy = planted_csv(tmp_path / "photos")
    out = tmp_path / "run"
    result = train(capfd, table, out, "reports.leaks.enabled=true")
    assert result.returncode == 0, result.stderr[-3000:]
    with (out / "leaks.csv").open() as file:
        found = list(csv.DictReader(file))
    # the planted copy is the test split's closest leak (a 1-epoch model also puts a few classmates above 0.999)
    test = [row for row in found if row["split"] == "test"]
    assert test and Path(test[0]["path"]) == copy and Path(test[0]["train_path"]) == source, found
    assert float(test[0]["cosine"]) >= 0.999
    warnings = [line for line in (out / "train.log").read_text().splitlines() if "leaks:" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], warnings
    counts = {row["split"]: 0 for row in found}
    for row in found:
        counts[row["split"]] += 1
    assert f"{counts['test']} of 21 test" in warnings[0] and "of 20 val" in warnings[0], warnings
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/leaks/test"] == counts["test"] and metrics["test/leaks/val"] == counts.get("val", 0)


@pytest.mark.parametrize("threshold", ["1.5", "-2"])
def test_a_leak_threshold_outside_minus_one_to_one_is_one_line_before_training(tmp_path, capfd, threshold):
    table, _, _ = planted_csv(tmp_path / "photos")
    result = train(capfd, table, tmp_path / "run", f"reports.leaks.threshold={threshold}")
    assert_clean_failure(result, f"reports.leaks.threshold={threshold}", "from -1 to 1")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
