"""Tests for simlearn.evaluation.class_similarity / ClassSimilarity."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from simlearn.errors import UserError
from simlearn.reports import ClassSimilarity, class_similarity


def _brute_force(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean of cos(e_i, e_j) over every pair (i in A, j in B), self-pairs i == j excluded; NaN if no pair."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    classes = np.unique(y)
    out = np.full((len(classes), len(classes)), np.nan)
    for a, ca in enumerate(classes):
        for b, cb in enumerate(classes):
            vals = [float(x[i] @ x[j]) for i in np.flatnonzero(y == ca) for j in np.flatnonzero(y == cb) if i != j]
            if vals:
                out[a, b] = np.mean(vals)
    return out


def _angles(degrees) -> np.ndarray:
    rad = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_matches_brute_force_pairwise_mean():
    rng = np.random.default_rng(0)
    y = rng.permutation(np.repeat([0, 2, 3, 7], [12, 7, 1, 4]))  # label 3 is a singleton, labels not contiguous
    x = rng.normal(size=(len(y), 6)) + 0.8 * rng.normal(size=(8, 6))[y]
    x *= rng.uniform(0.5, 5.0, size=(len(y), 1))  # scale must not matter (cosine)
    sim = class_similarity(x.astype(np.float32), y)
    ref = _brute_force(x, y)
    assert sim.class_names == ["0", "2", "3", "7"]
    assert sim.counts.tolist() == [12, 7, 1, 4]
    np.testing.assert_allclose(sim.cos, ref, atol=1e-6, equal_nan=True)
    assert np.isnan(sim.cos[2, 2]) and np.isnan(ref[2, 2])
    np.testing.assert_allclose(sim.cos, sim.cos.T, atol=1e-12, equal_nan=True)


def test_torch_input_and_names_indexed_by_label():
    x = torch.tensor(_angles([0, 10, 60, 70]), dtype=torch.float32)
    y = torch.tensor([2, 2, 0, 0])
    sim = class_similarity(x, y, class_names=["cat", "unused", "dog"])
    assert sim.class_names == ["cat", "dog"]  # sorted labels 0, 2 -> class_names[0], class_names[2]


def test_known_angle_60_degrees():
    # Class 0: two items at 0 deg; class 1: two items at 60 deg. cos = 0.5 across, 1.0 within.
    x = _angles([0, 0, 60, 60])
    sim = class_similarity(x, [0, 0, 1, 1])
    np.testing.assert_allclose(sim.cos, [[1.0, 0.5], [0.5, 1.0]], atol=1e-9)
    np.testing.assert_allclose(sim.angle_deg, [[0.0, 60.0], [60.0, 0.0]], atol=1e-4)


def test_spread_class_diagonal_and_angle():
    # Class 0 at +-30 deg: its only distinct pair is 60 deg apart -> diag cos 0.5. Class 1 at 90 deg (x2):
    # cross pairs are at 60 and 120 deg -> mean cos (0.5 - 0.5) / 2 = 0 -> angle 90.
    sim = class_similarity(_angles([30, -30, 90, 90]), [0, 0, 1, 1])
    assert sim.cos[0, 0] == pytest.approx(0.5)
    assert sim.cos[0, 1] == pytest.approx(0.0, abs=1e-12)
    assert sim.angle_deg[0, 1] == pytest.approx(90.0)


def test_json_round_trip_nan_as_null(tmp_path):
    sim = class_similarity(_angles([0, 20, 90]), [0, 0, 1], class_names=["a", "b"])  # "b" is a singleton
    path = tmp_path / "sub" / "sim.json"
    sim.save_json(path)
    text = path.read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert data["classes"] == ["a", "b"]
    assert data["counts"] == [2, 1]
    assert data["cos"][1][1] is None and data["angle_deg"][1][1] is None
    assert data["cos"][0][0] == pytest.approx(math.cos(math.radians(20)), abs=1e-6)
    assert data["angle_deg"][0][0] == pytest.approx(20.0, abs=1e-4)
    # cross: mean of cos(90) and cos(70)
    assert data["cos"][0][1] == pytest.approx((0 + math.cos(math.radians(70))) / 2, abs=1e-6)
    assert data["cos"][0][1] == data["cos"][1][0]
    assert data == sim.to_dict()
    assert all(v == round(v, 6) for row in data["cos"] for v in row if v is not None)


@pytest.mark.parametrize(("n_classes", "annotate"), [(3, True), (25, True), (4, False)])
def test_heatmap_is_png(tmp_path, n_classes, annotate):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(n_classes), 3)
    y[-1] = n_classes  # a singleton class -> NaN diagonal cell must render
    x = rng.normal(size=(len(y), 4))
    sim = class_similarity(x, y)
    path = tmp_path / "heat.png"
    sim.save_heatmap(path, title="test", annotate=annotate)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000


def test_dataclass_fields():
    sim = ClassSimilarity(class_names=["x", "y"], cos=np.array([[1.0, -2.0], [-1.0, np.nan]]), counts=np.array([2, 1]))
    np.testing.assert_allclose(sim.angle_deg, [[0.0, 180.0], [180.0, np.nan]], equal_nan=True)


@pytest.mark.parametrize(
    ("emb", "labels", "names", "match"),
    [
        (np.ones((3, 2)), [0, 1, 1], ["a"], "needs at least 2 entries"),
        (np.ones((3, 2)), [0, 1, 5], ["a", "b", "c"], "needs at least 6 entries"),
        (np.ones((3, 2)), [-1, 0, 0], ["a", "b"], "labels must be >= 0"),
        (np.ones((3, 2)), [0, 1, 1], "ab", "not a single string"),
        (np.ones(3), [0, 1, 1], None, "2-D"),
        (np.ones((0, 2)), np.zeros(0, int), None, "empty"),
        (np.ones((3, 2)), [0, 1], None, "2 entries but embeddings has 3"),
        (np.ones((3, 2)), [0.0, 1.0, 1.0], None, "integer class ids"),
        (np.full((3, 2), np.nan), [0, 1, 1], None, "NaN or inf"),
    ],
)
def test_user_errors(emb, labels, names, match):
    with pytest.raises(UserError, match=match):
        class_similarity(emb, np.asarray(labels), class_names=names)
