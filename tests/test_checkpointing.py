"""Checkpoint files are never left half-written, ties in the monitored metric keep the later epoch, and encoder weights
that do not fit their config are one line naming the keys."""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from simlearn.checkpoints import AtomicCheckpointIO, LatestBestCheckpoint

TRAINER = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda decision: decision))


def kept(callback, score):
    callback.best_k_models = {"epoch3.ckpt": torch.tensor(score)}
    callback.kth_best_model_path = "epoch3.ckpt"
    return callback


def test_a_tie_replaces_the_kept_checkpoint_where_lightning_keeps_the_first():
    latest = kept(LatestBestCheckpoint(monitor="val/recall@1", mode="max", save_top_k=1), 0.95)
    lightning = kept(ModelCheckpoint(monitor="val/recall@1", mode="max", save_top_k=1), 0.95)
    assert latest.check_monitor_top_k(TRAINER, torch.tensor(0.95))
    assert not lightning.check_monitor_top_k(TRAINER, torch.tensor(0.95))
    assert latest.check_monitor_top_k(TRAINER, torch.tensor(0.96))
    assert not latest.check_monitor_top_k(TRAINER, torch.tensor(0.94))
    minimum = kept(LatestBestCheckpoint(monitor="val/loss", mode="min", save_top_k=1), 0.3)
    assert minimum.check_monitor_top_k(TRAINER, torch.tensor(0.3))
    assert not minimum.check_monitor_top_k(TRAINER, torch.tensor(0.31))


def test_atomic_save_replaces_whole_files_and_survives_a_failed_write(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, path)
    assert torch.load(path, weights_only=False) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        io.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"epoch": 1}, "a failed save must leave the previous file intact"


def test_encoder_weights_that_do_not_fit_their_config_name_the_keys(trained_run, tmp_path):
    """A checkpoint whose encoder weights were changed after training: one line naming the first mis-shaped and
    missing keys and what the weights hold, not torch's many-line "Error(s) in loading state_dict"."""
    from simlearn.errors import UserError
    from simlearn.inference import load_model

    checkpoint = torch.load(next((trained_run / "checkpoints").glob("best-*.ckpt")), weights_only=False)
    state = checkpoint["state_dict"]
    first = next(key for key in state if key.startswith("encoder."))
    state[first] = torch.zeros(2, 2)
    dropped = [key for key in state if key.startswith("encoder.")][-1]
    del state[dropped]
    torch.save(checkpoint, tmp_path / "changed.ckpt")
    with pytest.raises(UserError) as error:
        load_model(tmp_path / "changed.ckpt")
    message = str(error.value)
    assert "\n" not in message and "its encoder weights do not fit Encoder: 1 of its" in message
    assert dropped.removeprefix("encoder.") in message
    assert f"e.g. {first.removeprefix('encoder.')} is [2, 2] in the file" in message and "the file holds" in message
