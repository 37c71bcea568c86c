"""The evaluators (simlearn/evaluation/evaluators.py): what RetrievalEvaluator and PairEvaluator report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from simlearn.evaluation import PairEvaluator, RetrievalEvaluator, knn_accuracy, pair_metrics
from simlearn.evaluation.pairs import best_threshold

from .helpers import clustered


def test_retrieval_evaluator_reports_knn_accuracy_next_to_retrieval_metrics():
    x, y = clustered(120, classes=3, dim=8, seed=3)
    fields = {"digit": torch.from_numpy(y)}
    metrics = RetrievalEvaluator(label_field="digit", knn_k=5)(torch.from_numpy(x), fields)
    assert metrics["knn_accuracy@5"] == pytest.approx(knn_accuracy(x, y, k=5))
    assert "recall@1" in metrics and "map@r" in metrics
    assert "knn_accuracy@5" not in RetrievalEvaluator(label_field="digit")(torch.from_numpy(x), fields)


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
