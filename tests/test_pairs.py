"""Pair labels: the pairs CSV data, PairTask's indices for PML, PairEvaluator's numbers, contrastive training."""

import json

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses import ContrastiveLoss
from sklearn.metrics import roc_auc_score

from simlearn.data import PairsCSVDataModule
from simlearn.errors import UserError
from simlearn.evaluation import PairEvaluator, pair_metrics
from simlearn.evaluation.pairs import best_threshold
from simlearn.losses import PairTask, pair_indices

from .helpers import run_training
from .photos import class_folders, distinct_pairs, write_csv


@pytest.fixture
def pairs_csv(tmp_path):
    """60 pairs of generated photos of 4 colours; similar = same colour."""
    files = class_folders(tmp_path / "photos", {"a": 8, "b": 8, "c": 8, "d": 8})
    # distinct pairs: the data drops repeated pairs, which random draws would give
    rows = [[str(a.relative_to(tmp_path)), str(b.relative_to(tmp_path)), s] for a, b, s in distinct_pairs(files, 60)]
    return write_csv(tmp_path / "pairs.csv", ["path_a", "path_b", "similar"], rows)


def test_pair_batches_hold_both_images_of_each_pair(pairs_csv):
    datamodule = PairsCSVDataModule(csv=pairs_csv, image_size=16, batch_size=5, num_workers=0, seed=0)
    datamodule.setup()
    assert sum(len(ds) for ds in datamodule.datasets.values()) == 60
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (10, 3, 16, 16)
    assert torch.equal(batch["pair"][0::2], batch["pair"][1::2]) and torch.equal(batch["index"] // 2, batch["pair"])
    assert torch.equal(batch["similar"][0::2], batch["similar"][1::2])
    for split, dataset in datamodule.datasets.items():
        assert set(dataset.labels("similar").tolist()) == {0, 1}, split
    again = PairsCSVDataModule(csv=pairs_csv, image_size=16, num_workers=0, seed=0)
    again.setup()
    assert torch.equal(again.datasets["test"].indices, datamodule.datasets["test"].indices)


def test_pair_indices_find_both_images_in_any_order():
    pair = torch.tensor([7, 3, 3, 9, 7, 9])
    similar = torch.tensor([1, 0, 0, 1, 1, 1])
    a1, p, a2, n = pair_indices(pair, similar)
    assert sorted(zip(a1.tolist(), p.tolist(), strict=True)) == [(0, 4), (3, 5)]
    assert list(zip(a2.tolist(), n.tolist(), strict=True)) == [(1, 2)]
    with pytest.raises(UserError, match="exactly twice"):
        pair_indices(torch.tensor([1, 1, 2]), torch.tensor([1, 1, 0]))


def test_pair_task_feeds_exactly_the_known_pairs_to_pml():
    torch.manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(8, 4), dim=1).requires_grad_()
    batch = {"pair": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), "similar": torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])}
    task = PairTask(ContrastiveLoss(pos_margin=1.0, neg_margin=0.3, distance=CosineSimilarity()))
    loss = task(embeddings, batch)
    cos = (embeddings[0::2] * embeddings[1::2]).sum(dim=1).detach()
    positive = torch.relu(1.0 - cos[[0, 2]])
    negative = torch.relu(cos[[1, 3]] - 0.3)
    expected = positive[positive > 0].mean() + (negative[negative > 0].mean() if (negative > 0).any() else 0.0)
    assert loss.item() == pytest.approx(float(expected), abs=1e-6)
    loss.backward()
    assert embeddings.grad is not None
    with pytest.raises(UserError, match="0 \\(dissimilar\\)"):
        task.check_targets(torch.tensor([0, 1, 2]))


def brute_force(cos, similar):
    positives = [c for c, s in zip(cos, similar, strict=True) if s == 1]
    negatives = [c for c, s in zip(cos, similar, strict=True) if s == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    accuracies = [
        sum((c >= t) == (s == 1) for c, s in zip(cos, similar, strict=True)) / len(cos) for t in [*cos, np.inf]
    ]
    return wins / (len(positives) * len(negatives)), max(accuracies)


def test_pair_evaluator_on_hand_made_cosines():
    angles = np.radians([5, 10, 30, 50, 20, 60, 80, 100, 120, 40])
    similar = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1])
    a = np.tile([1.0, 0.0], (len(angles), 1))
    b = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    embeddings = torch.tensor(np.stack([a, b], axis=1).reshape(-1, 2) * 3.0)  # a0, b0, a1, b1, …; any length
    pair = torch.arange(len(angles)).repeat_interleave(2)
    fields = {"pair": pair.flip(0), "similar": torch.tensor(similar).repeat_interleave(2).flip(0)}
    metrics = PairEvaluator()(embeddings.flip(0), fields)
    cos = np.cos(angles)
    auc, accuracy = brute_force(cos, similar)
    assert metrics["roc_auc"] == pytest.approx(auc) == pytest.approx(roc_auc_score(similar, cos))
    assert metrics["accuracy"] == pytest.approx(accuracy) == pytest.approx(0.9)  # 20° dissimilar sits among similar
    assert np.mean((cos >= metrics["threshold"]) == (similar == 1)) == pytest.approx(accuracy)
    assert metrics["num_pairs"] == 10 and metrics["num_similar"] == 5
    separable = pair_metrics(np.array([0.9, 0.8, 0.1, -0.2]), np.array([1, 1, 0, 0]))
    assert separable["roc_auc"] == 1.0 and separable["accuracy"] == 1.0 and 0.1 < separable["threshold"] < 0.8
    assert best_threshold(np.array([0.5, 0.5]), np.array([1, 0]))[1] == 0.5  # ties cannot be split
    assert np.isnan(pair_metrics(np.array([0.3, 0.4]), np.array([1, 1]))["roc_auc"])


def test_contrastive_pairs_train_and_report_roc_auc(tmp_path, pairs_csv):
    metrics = run_training(
        tmp_path / "run",
        "experiment=pairs_contrastive",
        f"data.csv={pairs_csv}",
        "backbone=small_cnn",
        "augment=none",
        "data.image_size=16",
        "data.batch_size=8",
        "data.num_workers=0",
        "head.out_dim=16",
        "optimizer.lr=0.003",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
    )
    assert 0.0 <= metrics["test/roc_auc"] <= 1.0 and metrics["val/best_roc_auc"] > 0.8
    assert metrics["test/roc_auc"] > 0.8 and metrics["test/num_pairs"] == 12  # 20 % of 30 similar + 30 dissimilar
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"test/accuracy", "test/threshold", "val/roc_auc"} <= set(written)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
