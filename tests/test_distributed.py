"""Exact evaluation under DDP (2 CPU processes, gloo) and bit-identical resume after a SIGKILL."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from .helpers import REPO, run_cli, run_main, run_training


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("train")
    run_training(run_dir, "trainer.max_epochs=2")
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(checkpoint, tmp_path, capfd):
    # 449 test items: DistributedSampler pads the 2 shards to 225 each, repeating one item.
    common = [f"ckpt_path={checkpoint}", "+data.max_test=449", "trainer.accelerator=cpu"]
    one = run_main("simlearn.cli.eval", *common, f"hydra.run.dir={tmp_path / 'one'}", capfd=capfd)
    two = run_cli(
        "-m", "simlearn.cli.eval", *common, "trainer=ddp", "trainer.devices=2", f"hydra.run.dir={tmp_path / 'two'}"
    )
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    double = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert single["test/num_queries"] == 449
    assert double == single
    a, b = np.load(tmp_path / "one" / "embeddings.npz"), np.load(tmp_path / "two" / "embeddings.npz")
    np.testing.assert_array_equal(a["labels"], b["labels"])
    np.testing.assert_allclose(a["embeddings"], b["embeddings"], atol=1e-6)


def _last_epoch(path):
    try:
        return torch.load(path, weights_only=False)["epoch"]
    except Exception:  # not written yet
        return -1


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_result(tmp_path):
    overrides = ["trainer.max_epochs=6", "logger=none", "trainer.deterministic=true", "data.batch_size=32"]
    reference = run_training(tmp_path / "reference", *overrides)

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "train.py", *overrides, f"hydra.run.dir={killed_dir}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = killed_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while _last_epoch(last) < 1 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _last_epoch(last)
    assert 1 <= killed_at < 5, f"the run was not killed mid-training (last epoch {killed_at})"
    assert not (killed_dir / "metrics.json").exists()

    result = run_cli("train.py", *overrides, "ckpt_path=last", f"hydra.run.dir={killed_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = json.loads((killed_dir / "metrics.json").read_text())
    for key in ("test/recall@1", "test/map@r", "test/r_precision", "val/recall@1", "val/map@r"):
        assert resumed[key] == reference[key], key


@pytest.mark.slow
def test_ddp_training_with_negatives_from_all_ranks(tmp_path):
    result = run_cli(
        "train.py",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "loss=contrastive",
        "loss.distributed=true",
        "trainer.max_epochs=2",
        "logger=none",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test/num_queries"] == 450 and metrics["test/recall@1"] > 0.9
    assert (tmp_path / "train_ddp_process_1.log").exists(), "the second rank did not run"
