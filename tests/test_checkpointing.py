"""Checkpoint files are never left half-written, and ties in the monitored metric keep the later epoch."""

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
