"""simlearn/evaluation/retrieval.py: retrieval_metrics (PML agreement, hand-computed cases, chunking, errors) and
kNN accuracy (majority vote of the k nearest neighbours under cosine) against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier

from simlearn.errors import UserError
from simlearn.evaluation import RetrievalEvaluator, knn_accuracy, retrieval_metrics

from .helpers import clustered

CLASS_SIZES = (120, 90, 60, 45, 30, 15, 8)  # ~7 classes of unequal size


def _clustered(seed: int, d: int, sizes=CLASS_SIZES, labels=None, spread: float = 1.3):
    """Random float32 embeddings: a centre per class plus Gaussian noise (metrics well inside (0, 1))."""
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = np.repeat(np.arange(len(sizes)), sizes)
    labels = rng.permutation(np.asarray(labels))
    centres = rng.normal(size=(labels.max() + 1, d))
    x = centres[labels] + spread * rng.normal(size=(len(labels), d))
    return x.astype(np.float32), labels.astype(np.int64)


def _angles(degrees) -> np.ndarray:
    rad = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def _brute_force(q, q_lab, g, g_lab, ks, self_search):
    """Reference: full similarity matrix, full sort, one Python loop iteration per query."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    sims = q @ g.T
    totals = {f"recall@{k}": 0.0 for k in ks} | {"precision@1": 0.0, "r_precision": 0.0, "map@r": 0.0}
    kept = lone = 0
    for i in range(len(q)):
        cand = np.arange(len(g))
        if self_search:
            cand = cand[cand != i]
        order = cand[np.argsort(-sims[i, cand], kind="stable")]
        rel = g_lab[order] == q_lab[i]
        r = int(rel.sum())
        if r == 0:
            lone += 1
            continue
        kept += 1
        for k in ks:
            totals[f"recall@{k}"] += float(rel[:k].any())
        totals["precision@1"] += float(rel[0])
        totals["r_precision"] += rel[:r].sum() / r
        ap = sum(rel[:j].sum() / j for j in range(1, r + 1) if rel[j - 1])
        totals["map@r"] += ap / r
    out = {key: v / kept for key, v in totals.items()}
    return out | {"num_queries": float(kept), "num_lone_queries": float(lone)}


def _pml(q, q_lab, g=None, g_lab=None, k="max_bin_count"):
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k=k,
        device=torch.device("cpu"),
        knn_func=CustomKNN(CosineSimilarity()),
    )
    if g is None:
        res = calc.get_accuracy(q, q_lab, q, q_lab, ref_includes_query=True)
    else:
        res = calc.get_accuracy(q, q_lab, g, g_lab, ref_includes_query=False)
    return {
        "precision@1": res["precision_at_1"],
        "r_precision": res["r_precision"],
        "map@r": res["mean_average_precision_at_r"],
    }


def _assert_close(ours: dict, ref: dict, tol: float = 1e-5):
    for key, v in ref.items():
        assert ours[key] == pytest.approx(v, abs=tol), key


# ---------------------------------------------------------------- agreement with PML


@pytest.mark.parametrize("pml_k", [None, "max_bin_count"])
@pytest.mark.parametrize(("seed", "d"), [(0, 8), (1, 32), (2, 8)])
def test_matches_pml_self_search(seed, d, pml_k):
    # Sizes include a singleton class: its query is lone in leave-one-out search.
    x, y = _clustered(seed, d, sizes=(150, 110, 70, 50, 25, 12, 1))
    ours = retrieval_metrics(x, y, ks=(1, 5))
    _assert_close(ours, _pml(x, y, k=pml_k))
    assert ours["num_lone_queries"] == 1.0
    assert ours["num_queries"] == len(x) - 1


@pytest.mark.parametrize("pml_k", [None, "max_bin_count"])
@pytest.mark.parametrize(("seed", "d"), [(3, 8), (4, 32)])
def test_matches_pml_separate_gallery(seed, d, pml_k):
    x, y = _clustered(seed, d, sizes=(140, 100, 80, 60, 40, 30, 20, 10))
    is_query = np.arange(len(x)) % 3 == 0
    q, q_lab, g, g_lab = x[is_query], y[is_query], x[~is_query], y[~is_query]
    # Class 7 appears only among the queries: those queries are lone.
    g, g_lab = g[g_lab != 7], g_lab[g_lab != 7]
    n_lone = int((q_lab == 7).sum())
    assert n_lone > 0
    ours = retrieval_metrics(q, q_lab, ks=(1, 10), gallery_embeddings=g, gallery_labels=g_lab)
    _assert_close(ours, _pml(q, q_lab, g, g_lab, k=pml_k))
    assert ours["num_lone_queries"] == n_lone
    assert ours["num_queries"] == len(q) - n_lone


# ---------------------------------------------------------------- hand-computed cases


def test_hand_computed_self_search():
    # Unit vectors at angles : a0=0, a1=15, b0=25, a2=90, b1=100 (labels a=0, b=1); c=250 (label 2, lone).
    # Cosine decreases with angular distance, so each query's ranking (c is always last) is:
    #   a0: a1(15) b0(25) a2(90) b1(100)   rel 1 0 1 0  R=2  P@1=1  RP=1/2  AP@R=(1/1)/2        = 1/2
    #   a1: b0(10) a0(15) a2(75) b1(85)    rel 0 1 1 0  R=2  P@1=0  RP=1/2  AP@R=(1/2)/2        = 1/4
    #   b0: a1(10) a0(25) a2(65) b1(75)    rel 0 0 0 1  R=1  P@1=0  RP=0    AP@R=0
    #   a2: b1(10) b0(65) a1(75) a0(90)    rel 0 0 1 1  R=2  P@1=0  RP=0    AP@R=0
    #   b1: a2(10) b0(75) a1(85) a0(100)   rel 0 1 0 0  R=1  P@1=0  RP=0    AP@R=0
    # recall@1 = 1/5; recall@3: a same-class item in the top 3 for a0, a1, a2, b1 (not b0) = 4/5.
    x = _angles([0, 15, 25, 90, 100, 250])
    y = np.array([0, 0, 1, 0, 1, 2])
    out = retrieval_metrics(x, y, ks=(1, 3))
    assert out == pytest.approx(
        {
            "recall@1": 1 / 5,
            "recall@3": 4 / 5,
            "precision@1": 1 / 5,
            "r_precision": (1 / 2 + 1 / 2) / 5,
            "map@r": (1 / 2 + 1 / 4) / 5,
            "num_queries": 5.0,
            "num_lone_queries": 1.0,
        }
    )


def test_hand_computed_map_at_r_with_gap():
    # Query at 0 deg (label 0) against a gallery at 10(0), 20(1), 30(0), 40(0), 50(1): R=3, rel = 1 0 1 1 0.
    # AP@R = (P(1) + P(3)) / 3 = (1 + 2/3) / 3 = 5/9 (the hit at rank 4 is beyond R and does not count);
    # R-precision = 2/3; recall@1 = recall@2 = 1.
    g = _angles([10, 20, 30, 40, 50])
    out = retrieval_metrics(_angles([0]), [0], ks=(1, 2), gallery_embeddings=g, gallery_labels=[0, 1, 0, 0, 1])
    assert out["map@r"] == pytest.approx(5 / 9)
    assert out["r_precision"] == pytest.approx(2 / 3)
    assert out["precision@1"] == out["recall@1"] == out["recall@2"] == 1.0


def test_hand_computed_separate_gallery_with_lone_query():
    # Gallery: g0 at 20 deg (label 0), g1 at 30 (label 1), g2 at 60 (label 0).
    #   q0 at 0 (label 0):  g0(20) g1(30) g2(60)  rel 1 0 1  R=2  P@1=1  RP=1/2  AP@R=1/2  recall@1=recall@2=1
    #   q1 at 50 (label 1): g2(10) g1(20) g0(30)  rel 0 1 0  R=1  P@1=0  RP=0    AP@R=0    recall@1=0, @2=1
    #   q2 at 10 (label 5): no label-5 item in the gallery -> lone, left out.
    q, q_lab = _angles([0, 50, 10]), np.array([0, 1, 5])
    g, g_lab = _angles([20, 30, 60]), np.array([0, 1, 0])
    out = retrieval_metrics(q, q_lab, ks=(1, 2), gallery_embeddings=g, gallery_labels=g_lab)
    assert out == pytest.approx(
        {
            "recall@1": 1 / 2,
            "recall@2": 1.0,
            "precision@1": 1 / 2,
            "r_precision": 1 / 4,
            "map@r": 1 / 4,
            "num_queries": 2.0,
            "num_lone_queries": 1.0,
        }
    )


def test_scale_invariant_cosine():
    # Embeddings are L2-normalised inside: rescaling rows must not change anything.
    x, y = _clustered(5, 8, sizes=(30, 20, 10))
    scaled = x * np.random.default_rng(0).uniform(0.1, 50, size=(len(x), 1)).astype(np.float32)
    assert retrieval_metrics(scaled, y) == pytest.approx(retrieval_metrics(x, y))


# ---------------------------------------------------------------- chunking vs brute force


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_chunked_matches_brute_force_self_search(chunk_size):
    x, y = _clustered(6, 8, sizes=(60, 45, 30, 20, 10, 5, 1))
    ks = (1, 5, 10)
    _assert_close(retrieval_metrics(x, y, ks=ks, chunk_size=chunk_size), _brute_force(x, y, x, y, ks, True))


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_chunked_matches_brute_force_gallery(chunk_size):
    q, q_lab = _clustered(7, 32, sizes=(20, 15, 10, 5, 3))
    g, g_lab = _clustered(8, 32, sizes=(50, 40, 30, 20))  # class 4 absent from the gallery -> lone queries
    ks = (1, 3, 20)
    ours = retrieval_metrics(q, q_lab, ks=ks, gallery_embeddings=g, gallery_labels=g_lab, chunk_size=chunk_size)
    _assert_close(ours, _brute_force(q, q_lab, g, g_lab, ks, False))
    assert ours["num_lone_queries"] == 3.0


def test_numpy_and_torch_inputs_agree():
    x, y = _clustered(9, 8, sizes=(40, 30, 20))
    ref = retrieval_metrics(x, y)
    assert set(ref) == {
        "recall@1",
        "recall@5",
        "recall@10",
        "precision@1",
        "r_precision",
        "map@r",
        "num_queries",
        "num_lone_queries",
    }
    assert retrieval_metrics(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(ref)
    assert retrieval_metrics(torch.from_numpy(x).double(), torch.from_numpy(y).int()) == pytest.approx(ref)
    assert retrieval_metrics(x.astype(np.float16), y.astype(np.int32))["num_queries"] == len(x)
    assert all(isinstance(v, float) and math.isfinite(v) for v in ref.values())


# ---------------------------------------------------------------- validation


def _ok():
    return _angles([0, 10, 20, 90, 100, 110]), np.array([0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"embeddings": np.zeros(6, np.float32)}, "2-D"),
        ({"labels": np.zeros((6, 1), np.int64)}, "1-D"),
        ({"labels": np.array([0, 1, 0])}, "3 entries but embeddings has 6"),
        ({"labels": np.array([0.0, 1, 0, 1, 0, 1])}, "integer class ids"),
        ({"embeddings": np.zeros((0, 2), np.float32), "labels": np.zeros(0, np.int64)}, "empty"),
        ({"ks": ()}, "ks is empty"),
        ({"ks": (1, 0)}, "ints >= 1"),
        ({"ks": (1, 2.5)}, "ints >= 1"),
        ({"ks": 5}, "sequence"),
        ({"ks": (6,)}, "largest valid k is 5"),
        ({"labels": np.zeros(6, np.int64)}, "only one class .* At least 2 classes"),
        ({"labels": np.arange(6)}, "every query is lone"),
        ({"embeddings": np.where(np.eye(6, 2) > 0, np.nan, 1.0)}, "NaN or inf"),
        ({"embeddings": np.full((6, 2), np.inf)}, "NaN or inf"),
        ({"gallery_embeddings": np.ones((4, 2))}, "gallery_labels is missing"),
        ({"gallery_labels": np.array([0, 1])}, "gallery_embeddings is missing"),
        ({"gallery_embeddings": np.ones((2, 3)), "gallery_labels": np.array([0, 1])}, "dim 3"),
        (
            {"gallery_embeddings": np.ones((2, 2)), "gallery_labels": np.array([0, 1, 1])},
            "gallery_labels has 3",
        ),
        (
            {"gallery_embeddings": np.ones((3, 2)), "gallery_labels": np.array([0, 1, 1]), "ks": (4,)},
            "largest valid k is 3",
        ),
        ({"gallery_embeddings": np.ones((2, 2)), "gallery_labels": np.array([7, 8])}, "every query is lone"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_user_errors(kwargs, match):
    x, y = _ok()
    args = {"embeddings": x, "labels": y, "ks": (1,)} | kwargs
    with pytest.raises(UserError, match=match):
        retrieval_metrics(**args)


def test_unit_length_embeddings_are_searched_without_a_normalised_copy():
    from simlearn.retrieval.inputs import query_gallery

    rng = np.random.default_rng(0)
    raw = rng.normal(size=(60, 8)).astype(np.float32) * 3
    unit = torch.nn.functional.normalize(torch.from_numpy(raw), dim=1)
    labels = np.arange(60) % 4
    assert query_gallery(unit, labels).queries.data_ptr() == unit.data_ptr()  # no copy of a large gallery
    scaled = query_gallery(raw, labels).queries
    torch.testing.assert_close(scaled, unit)  # anything else is normalised
    assert retrieval_metrics(raw, labels) == pytest.approx(retrieval_metrics(unit, labels), abs=1e-12)


def test_finite_embeddings_whose_squares_overflow_are_normalised_not_rejected():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    labels = np.arange(40) % 4
    huge = x * np.float32(1e30)  # finite, but their squared norms overflow float32
    assert retrieval_metrics(huge, labels) == pytest.approx(retrieval_metrics(x, labels), abs=1e-12)


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


def test_too_few_items_for_the_ks_names_evaluation_ks_and_a_valid_value():
    rng = np.random.default_rng(0)
    embeddings, labels = rng.normal(size=(8, 4)), np.arange(8) % 2
    with pytest.raises(UserError) as caught:
        retrieval_metrics(embeddings, labels, ks=(1, 5, 10))
    message = str(caught.value)
    assert "largest valid k is 7" in message and "evaluation.ks=[1,5]" in message
    with pytest.raises(UserError, match=r"evaluation\.ks=\[3\]"):  # no k fits: the largest valid one
        retrieval_metrics(embeddings, labels, ks=(4, 5), gallery_embeddings=embeddings[:3], gallery_labels=labels[:3])
