"""kNN accuracy (majority vote of the k nearest neighbours under cosine) against scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier

from simlearn.errors import UserError
from simlearn.evaluation import RetrievalEvaluator, knn_accuracy, retrieval_metrics


def clustered(n: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping class clusters, so that neighbours disagree and votes tie now and then."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    centres = rng.normal(size=(classes, dim))
    return (centres[labels] + 1.2 * rng.normal(size=(n, dim))).astype(np.float32), labels


@pytest.mark.parametrize("k", [1, 4, 5])
def test_leave_one_out_matches_sklearn(k):
    x, y = clustered(160, classes=4, dim=8, seed=k)
    classifier = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    expected = (cross_val_predict(classifier, x, y, cv=LeaveOneOut()) == y).mean()
    assert knn_accuracy(x, y, k=k) == pytest.approx(expected, abs=1e-12)
    assert knn_accuracy(x, y, k=k, chunk_size=7) == pytest.approx(expected, abs=1e-12)  # chunking changes nothing
    assert 0.3 < expected < 0.95  # neither trivial nor hopeless


def test_against_a_separate_gallery_matches_sklearn():
    x, y = clustered(300, classes=5, dim=6, seed=0)
    queries, gallery = slice(0, 100), slice(100, 300)
    classifier = KNeighborsClassifier(n_neighbors=5, metric="cosine", algorithm="brute").fit(x[gallery], y[gallery])
    expected = (classifier.predict(x[queries]) == y[queries]).mean()
    got = knn_accuracy(x[queries], y[queries], k=5, gallery_embeddings=x[gallery], gallery_labels=y[gallery])
    assert got == pytest.approx(expected, abs=1e-12)


def test_retrieval_evaluator_reports_knn_accuracy_next_to_retrieval_metrics():
    x, y = clustered(120, classes=3, dim=8, seed=3)
    fields = {"digit": torch.from_numpy(y)}
    metrics = RetrievalEvaluator(label_field="digit", knn_k=5)(torch.from_numpy(x), fields)
    assert metrics["knn_accuracy@5"] == pytest.approx(knn_accuracy(x, y, k=5))
    assert "recall@1" in metrics and "map@r" in metrics
    assert "knn_accuracy@5" not in RetrievalEvaluator(label_field="digit")(torch.from_numpy(x), fields)


def test_bad_k_is_a_user_error():
    x, y = clustered(10, classes=2, dim=4, seed=0)
    with pytest.raises(UserError, match="needs at least 10 neighbours per query, but there are 9"):
        knn_accuracy(x, y, k=10)
    with pytest.raises(UserError, match="evaluation.knn_k must be null or an integer ≥ 1"):
        RetrievalEvaluator(label_field="digit", knn_k=0)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_each_backend_matches_sklearn(backend):
    pytest.importorskip("faiss")
    x, y = clustered(200, classes=4, dim=8, seed=7)
    classifier = KNeighborsClassifier(n_neighbors=5, metric="cosine", algorithm="brute")
    expected = (cross_val_predict(classifier, x, y, cv=LeaveOneOut()) == y).mean()
    assert knn_accuracy(x, y, k=5, backend=backend, chunk_size=64) == pytest.approx(expected, abs=1e-12)


def test_retrieval_metrics_reads_knn_accuracy_off_the_same_search_lone_queries_included():
    x, y = clustered(150, classes=3, dim=8, seed=5)
    y = y.copy()
    y[:4] = [10, 11, 12, 13]  # four lone queries: left out of retrieval, counted (always wrong) by kNN accuracy
    metrics = retrieval_metrics(x, y, knn_k=5, chunk_size=16)
    assert metrics["num_lone_queries"] == 4
    assert metrics["knn_accuracy@5"] == pytest.approx(knn_accuracy(x, y, k=5), abs=1e-12)
    without = retrieval_metrics(x, y, chunk_size=16)
    assert "knn_accuracy@5" not in without
    assert without == pytest.approx({k: v for k, v in metrics.items() if k != "knn_accuracy@5"}, abs=1e-12)
