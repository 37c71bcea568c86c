"""What a newcomer reads: a run's console says each thing once and nothing that reads as an error when nothing is
wrong; the metrics table's title is never broken; metrics.json counts are integers."""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections import Counter

import numpy as np
import pytest

from simlearn.build import build_datamodule
from simlearn.config import compose_config
from simlearn.console import is_count, print_metrics, quiet_console
from simlearn.evaluation.clustering import kmeans_labels

from .photos import class_folders

#: The prefixes the same message gets from Hydra's handler (``[time][logger][LEVEL] - ``) and Lightning's own
#: (``INFO: ``): stripped, a message printed by both is the same line twice.
PREFIX = re.compile(r"^(\[[^\]]*\]\[[^\]]*\]\[[A-Z]+\] - |(INFO|WARNING|ERROR|DEBUG): )")


def messages(text: str) -> list[str]:
    """The console's messages: its lines without the log prefixes, leaving out blank lines and table borders."""
    lines = (PREFIX.sub("", line).strip() for line in text.splitlines())
    return [line for line in lines if line and not set(line) <= set("┏┓┗┛┡┩└┘━─┳┻╇╈┃│ ")]


def test_a_run_prints_each_message_once(trained_run_console):
    stdout, stderr = trained_run_console
    repeated = [line for line, count in Counter(messages(stdout + stderr)).items() if count > 1]
    assert repeated == []
    assert "Seed set to 42" in stdout  # Lightning's messages are still printed, once


@pytest.mark.parametrize(
    "noise",
    [
        "ModuleNotFoundError",  # faiss's loader trying its AVX512 and AVX2 builds before the one installed
        "Loading faiss",
        "Traceback",
        "litlogger",
        "litmodels",
        "LeafSpec",
        "worker processes in total",  # PyTorch: more DataLoader workers than cores
        "WARNING clustering",  # faiss k-means on a small split
    ],
)
def test_a_run_prints_nothing_that_reads_as_an_error_or_is_not_about_it(trained_run_console, noise):
    stdout, stderr = trained_run_console
    assert noise not in stdout + stderr


def test_lightning_messages_reach_the_run_log_once(trained_run):
    log = (trained_run / "train.log").read_text()
    assert log.count("Seed set to 42") == 1


def test_metrics_json_counts_are_integers(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    counts = {key: value for key, value in metrics.items() if is_count(key)}
    assert {"test/num_queries", "val/num_queries", "test/num_lone_queries", "train/epochs"} <= set(counts)
    assert all(type(value) is int for value in counts.values()), counts
    assert counts["train/epochs"] == 2
    assert type(metrics["test/recall@1"]) is float


def test_the_table_title_is_one_unbroken_line(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal: rich wrapped the title to the table's width
    run_dir = "/tmp/pytest-of-someone/pytest-12/test_a_long_run_directory_name0/outputs/train/runs/2026-12-06"
    print_metrics({"test/recall@1": 0.95, "test/num_queries": 450.0}, title=f"simlearn · {run_dir}")
    out = capsys.readouterr().out
    assert f"simlearn · {run_dir}\n" in out
    assert re.search(r"num_queries\s*│\s*450\s*│", out)


def test_lightnings_own_console_handler_is_dropped_under_configured_logging(monkeypatch):
    lightning_logger = logging.getLogger("lightning")
    root_handler = logging.StreamHandler()
    own = logging.StreamHandler()  # what lightning/__init__.py adds at import
    monkeypatch.setattr(lightning_logger, "handlers", [own])
    monkeypatch.setattr(logging.getLogger(), "handlers", [root_handler])
    file_handler = logging.FileHandler(os.devnull)
    lightning_logger.addHandler(file_handler)  # a user's own file handler stays
    try:
        quiet_console()
        assert lightning_logger.handlers == [file_handler]
        assert lightning_logger.propagate
    finally:
        file_handler.close()


def test_only_the_known_harmless_messages_are_filtered(caplog):
    quiet_console()
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        rank_zero.info("💡 Tip: For seamless cloud uploads and versioning, try installing litmodels")
        rank_zero.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_console()  # its filters come first again
        from lightning.pytorch.utilities._pytree import _tree_flatten

        _tree_flatten(1)  # builds a LeafSpec: torch's FutureWarning, raised inside Lightning
        warnings.warn("a real deprecation", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real deprecation"]


def test_kmeans_on_a_small_split_prints_no_faiss_warning(capfd):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    x = (np.repeat(np.eye(4, 8), 6, axis=0) + 0.05 * rng.normal(size=(24, 8))).astype(np.float32)
    clusters = kmeans_labels(x, 4)
    out, err = capfd.readouterr()
    assert "WARNING clustering" not in out + err  # "24 points to 4 centroids: please provide at least 156"
    assert len(set(clusters[i * 6] for i in range(4))) == 4  # the four groups are still found


def test_photo_loaders_start_no_more_workers_than_cores(tmp_path, monkeypatch):
    class_folders(tmp_path / "photos", {"a": 6, "b": 6, "c": 6})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)  # a 2-core machine
    cfg = compose_config(["data=image_folder", f"data.root={tmp_path / 'photos'}", "data.image_size=16"])
    datamodule = build_datamodule(cfg.data)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert loader.num_workers == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader.check_worker_number_rationality()  # what PyTorch runs when the loader starts its workers
    assert [str(w.message) for w in caught] == []
