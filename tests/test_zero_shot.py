"""The zero-shot baseline: ``train=false`` tests the model as built (no training) and writes the run's files;
``head=identity`` embeds with the backbone's own features, L2-normalised."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from simlearn.errors import UserError
from simlearn.models.heads import IdentityHead
from simlearn.train import train

from .helpers import run_training, train_config, untrained_metrics


def test_train_false_tests_the_untrained_model_and_writes_its_files(tmp_path):
    run_dir = tmp_path / "run"
    metrics = run_training(run_dir, "train=false")
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["train/epochs"] == 0.0 and not any(key.startswith("val/") for key in written)
    assert (run_dir / "embeddings.npz").is_file() and (run_dir / "config.yaml").is_file()
    assert not list(run_dir.glob("checkpoints/*.ckpt"))  # nothing was trained, so nothing is saved as if it were
    # exactly the metrics of the freshly initialised model (same seed, same build order)
    baseline = untrained_metrics(train_config(tmp_path / "other"))
    for key in ("recall@1", "precision@1", "map@r", "r_precision"):
        assert written[f"test/{key}"] == pytest.approx(baseline[key], abs=1e-6) == metrics[f"test/{key}"]


def test_train_false_refuses_a_checkpoint_before_touching_the_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(UserError, match=r"train=false .* takes no ckpt_path=x.ckpt; .*simlearn-eval ckpt_path=x.ckpt"):
        train(train_config(run_dir, "train=false", "ckpt_path=x.ckpt"))
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_identity_head_is_the_normalised_backbone_features():
    head = IdentityHead(in_features=6)
    features = torch.tensor([[3.0, 4.0, 0, 0, 0, 0], [0, 0, 0, 0, 0, -2.0]])
    embeddings = head(features)
    assert head.out_dim == 6 and not list(head.parameters())
    assert torch.allclose(embeddings, torch.tensor([[0.6, 0.8, 0, 0, 0, 0], [0, 0, 0, 0, 0, -1.0]]))
    assert IdentityHead(in_features=6, out_dim=6).out_dim == 6
    with pytest.raises(UserError, match=r"keeps the backbone's 6 features, but head.out_dim=4; set head.out_dim=6"):
        IdentityHead(in_features=6, out_dim=4)


def test_identity_head_with_a_loss_sized_by_the_embedding_trains_on_digits(tmp_path):
    """head.out_dim null is filled with the backbone's size, so loss=softmax (embedding_size=${head.out_dim}) builds;
    the checkpoint's config holds the size and the encoder embeds with it."""
    run_dir = tmp_path / "run"
    metrics = run_training(run_dir, "head=identity", "trainer.max_epochs=1", "data.max_train=400")
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    size = checkpoint["simlearn_config"]["head"]["out_dim"]
    assert size == np.load(run_dir / "embeddings.npz")["embeddings"].shape[1] > 2
    assert not any(key.startswith("encoder.head.") for key in checkpoint["state_dict"])
    assert 0.0 <= metrics["test/recall@1"] <= 1.0
