"""Exact evaluation under DDP (2 CPU processes, gloo), the spawn and fork strategies equal to it, and bit-identical
resume after a SIGKILL."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from simlearn.errors import UserError
from simlearn.train import optimized_value, train

from .helpers import REPO, run_cli, run_main, run_training, train_config


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
@pytest.mark.parametrize(
    "loss",
    # byol: a momentum teacher (an EMA of the encoder, in the checkpoint) and two views per image drawn from the run's
    # seed and batch number, so the resumed run must restore the teacher and make the same views
    [[], ["loss=byol", "data.max_train=512"]],
    ids=["softmax", "byol"],
)
def test_resume_after_sigkill_gives_the_uninterrupted_result(tmp_path, loss):
    common = ["trainer.max_epochs=6", "logger=none", "trainer.deterministic=true", "data.batch_size=32"]
    overrides = [*common, *loss]
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

    # the resume continues the run's saved config (a group option given again is refused)
    result = run_cli("train.py", *common, "ckpt_path=last", f"hydra.run.dir={killed_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = json.loads((killed_dir / "metrics.json").read_text())
    for key in ("test/recall@1", "test/map@r", "test/r_precision", "val/recall@1", "val/map@r"):
        assert resumed[key] == reference[key], key


#: Two CPU processes (gloo), negatives mined from both ranks.
DDP_RUN = (
    "trainer=ddp",
    "trainer.devices=2",
    "trainer.accelerator=cpu",
    "loss=contrastive",
    "loss.distributed=true",
    "trainer.max_epochs=2",
    "logger=none",
    "reports.plots=null",
)


def _files(run_dir):
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def _results(run_dir):
    """The run's files without its logs and Hydra's copies, which a run composed outside Hydra does not have."""
    return [
        f for f in _files(run_dir) if not f.endswith(".log") and f not in (".hydra/hydra.yaml", ".hydra/overrides.yaml")
    ]


def _without_time(metrics):
    return {key: value for key, value in metrics.items() if key != "train/wall_s"}


@pytest.mark.slow
def test_ddp_training_with_negatives_from_all_ranks_and_the_spawn_and_fork_strategies(tmp_path, capfd):
    result = run_cli("train.py", *DDP_RUN, f"hydra.run.dir={tmp_path / 'ddp'}")
    assert result.returncode == 0, result.stderr[-3000:]
    reference = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert reference["test/num_queries"] == 450 and reference["test/recall@1"] > 0.9
    assert (tmp_path / "ddp" / "train_ddp_process_1.log").exists(), "the second rank did not run"

    # ddp_spawn from the command line: the ranks are new processes that run the whole run, with the Hydra state and
    # per-rank logs of ddp's ranks
    spawned = run_cli("train.py", *DDP_RUN, "trainer.strategy=ddp_spawn", f"hydra.run.dir={tmp_path / 'spawn'}")
    assert spawned.returncode == 0, spawned.stderr[-3000:]
    assert "Traceback" not in spawned.stderr and "simlearn · " in spawned.stdout  # the launching process's table
    # each message once in the ranks too: rank 1 prints no rank-zero line, and no rank prints Lightning's tips
    console = spawned.stdout + spawned.stderr
    assert console.count("GPU available:") == 1 and "💡 Tip" not in console, console[-3000:]
    # ddp_notebook (fork) from this process, as a notebook runs it: this process prints and returns rank 0's metrics
    cfg = train_config(tmp_path / "fork", *DDP_RUN, "trainer.strategy=ddp_notebook")
    capfd.readouterr()
    returned = train(cfg)
    printed = capfd.readouterr().out

    # the same seed, shards, thread count (the launchers set it alike) and gloo reductions as under ddp: the same
    # arithmetic in the same order, so equal to the bit; only the wall time differs
    ddp_embeddings = np.load(tmp_path / "ddp" / "embeddings.npz")
    for name in ("spawn", "fork"):
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert _without_time(metrics) == _without_time(reference), name
        embeddings = np.load(tmp_path / name / "embeddings.npz")
        np.testing.assert_array_equal(embeddings["embeddings"], ddp_embeddings["embeddings"])
        np.testing.assert_array_equal(embeddings["labels"], ddp_embeddings["labels"])
        assert (tmp_path / name / "splits.json").read_text() == (tmp_path / "ddp" / "splits.json").read_text()
        # rank 0 writes each file, nothing else writes any: the same files as ddp's run
        assert _results(tmp_path / name) == _results(tmp_path / "ddp"), name
    assert _files(tmp_path / "spawn") == _files(tmp_path / "ddp")  # rank 1 logs into train_ddp_process_1.log too
    forked = json.loads((tmp_path / "fork" / "metrics.json").read_text())
    assert returned == {key: value for key, value in forked.items() if key != "test/protocol"}
    assert optimized_value(cfg, returned) == reference["val/best_recall@1"]  # what a sweeper gets
    assert "simlearn · " in printed and "recall@1" in printed


@pytest.mark.slow
def test_an_error_of_rank_0_is_the_one_line_error_of_one_process(tmp_path):
    # the weights diverge: rank 0's evaluation (or both ranks at the same training batch) stops at NaN. It comes back
    # to the launching process as itself, for the command line's one line (exit 2), not as the traceback of rank 1,
    # which fails too once its peer has gone ("Connection closed by peer")
    cfg = train_config(tmp_path, *DDP_RUN, "trainer.strategy=ddp_fork", "optimizer.lr=1e6")
    with pytest.raises(UserError, match=r"^(training loss is \S+ at epoch 0|embeddings contains NaN or inf)"):
        train(cfg)
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))
