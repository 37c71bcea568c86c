"""A training loss that turns NaN or inf stops the run at that batch with one clear line, and saves nothing of it."""

import csv
import math
import re

import pytest
import torch

from simlearn.build import build_datamodule, build_model
from simlearn.errors import UserError

from .helpers import run_cli, run_main, run_training, train_config


@pytest.mark.slow
def test_exploding_learning_rate_stops_at_the_first_non_finite_loss_with_one_line(tmp_path):
    result = run_cli(
        "train.py",
        "optimizer.lr=1e6",
        "trainer.max_epochs=3",
        "trainer.log_every_n_steps=1",  # every step's loss in csv/metrics.csv
        "reports.plots=null",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    message = errors[0]
    assert result.stderr.rstrip().splitlines()[-1] == message, "the error must be one line, the last one"
    found = re.search(r"training loss is (nan|inf|-inf) at epoch 0, batch (\d+) \(global step (\d+)\)", message)
    assert found, message
    step = int(found.group(3))
    assert "optimizer.lr=0.0003" not in message, "the suggestion must follow the configured learning rate"
    assert "optimizer.lr=0.001" in message and "trainer.gradient_clip_val=1.0" in message

    # it stopped at that batch: every logged loss is finite, and the last one is the step before
    with open(tmp_path / "csv" / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/loss")]
    assert all(math.isfinite(float(row["train/loss"])) for row in rows)
    assert [int(row["step"]) for row in rows] == list(range(step))
    assert {row["epoch"] for row in rows} <= {"0"}
    assert not list((tmp_path / "checkpoints").glob("*.ckpt")), "nothing of the diverged state may be saved"


def _with_learning_rate(checkpoint: dict, lr: float) -> dict:
    """The checkpoint's optimiser and scheduler set to ``lr`` (a resumed run takes its learning rate from them)."""
    for group in checkpoint["optimizer_states"][0]["param_groups"]:
        group["lr"] = group["initial_lr"] = lr
    for scheduler in checkpoint["lr_schedulers"]:
        scheduler["base_lrs"] = [lr] * len(scheduler["base_lrs"])
        scheduler["_last_lr"] = [lr] * len(scheduler["_last_lr"])
    return checkpoint


def test_divergence_after_resuming_keeps_the_last_good_checkpoint(tmp_path, capfd):
    run_training(tmp_path, "trainer.max_epochs=1")
    last = tmp_path / "checkpoints" / "last.ckpt"
    # epoch 0 as trained, but with an exploding learning rate for what follows
    torch.save(_with_learning_rate(torch.load(last, weights_only=False), 1e6), last)
    good = last.read_bytes()

    # no validation in epoch 1 and last.ckpt written at every training epoch end: without the check, the NaN state
    # of epoch 1 would be saved over last.ckpt before any validation could notice
    result = run_main(
        "simlearn.cli.train",
        "ckpt_path=last",
        "trainer.max_epochs=3",
        "trainer.check_val_every_n_epoch=3",
        "+callbacks.last_checkpoint.save_on_train_epoch_end=true",
        f"hydra.run.dir={tmp_path}",
        capfd=capfd,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    stopped = re.search(r"^error: training loss is (nan|inf|-inf) at epoch 1, batch \d+", result.stderr, re.M)
    assert stopped, result.stderr[-3000:]
    assert last.read_bytes() == good
    kept = torch.load(last, weights_only=False)
    assert kept["epoch"] == 0
    assert all(torch.isfinite(value).all() for value in kept["state_dict"].values() if value.is_floating_point())


def test_a_checkpoint_of_non_finite_weights_or_statistics_is_refused(tmp_path):
    # the second guard: BatchNorm statistics can overflow while the training loss stays finite
    cfg = train_config(tmp_path)
    model = build_model(cfg, build_datamodule(cfg.data))
    checkpoint = {}
    model.on_save_checkpoint(checkpoint)
    assert "simlearn_config" in checkpoint
    statistics = next(buffer for name, buffer in model.named_buffers() if name.endswith("running_var"))
    statistics.fill_(float("inf"))
    with pytest.raises(UserError, match=r"the weights hold NaN or inf \(encoder\.[\w.]+running_var\)") as error:
        model.on_save_checkpoint({})
    assert "optimizer.lr=0.0003" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "overrides,suggested",
    [
        (["optimizer.lr=1e6"], "optimizer.lr=0.001"),  # AdamW: its usual range, not 1e5
        (["optimizer._target_=torch.optim.SGD", "optimizer.lr=1e6"], "optimizer.lr=0.1"),
        (["optimizer._target_=torch.optim.SGD", "optimizer.lr=0.5"], "optimizer.lr=0.05"),  # a tenth at most
        (["optimizer.lr=0.003"], "optimizer.lr=0.0003"),
    ],
    ids=["adamw-1e6", "sgd-1e6", "sgd-0.5", "adamw-0.003"],
)
def test_the_divergence_hint_suggests_a_learning_rate_a_user_would_try(tmp_path, overrides, suggested):
    cfg = train_config(tmp_path, *overrides)
    model = build_model(cfg, build_datamodule(cfg.data))
    advice = model._divergence_advice()
    assert f"{suggested}," in advice, advice
