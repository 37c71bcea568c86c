"""Hamming metrics of binary codes: the ranking by the tie rule equals a brute force, the tie-aware metrics equal
the mean over every order of the tied blocks (enumerated), mAP@1000 equals its definition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from simlearn.evaluation.hamming import hamming_metrics, tie_aware_metrics


def distances(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    qb, gb = np.unpackbits(q, axis=1).astype(int), np.unpackbits(g, axis=1).astype(int)
    return (qb[:, None, :] != gb[None, :, :]).sum(axis=2)


def ranking_metrics(rel: np.ndarray, r: int, ks: tuple[int, ...]) -> list[float]:
    """recall@k, precision@1, R-precision, MAP@R of one ranked relevance list (their definitions, by loop)."""
    out = [float(rel[:k].any()) for k in ks]
    out.append(float(rel[0]))
    out.append(rel[:r].sum() / r)
    ap, hits = 0.0, 0
    for i in range(r):
        if rel[i]:
            hits += 1
            ap += hits / (i + 1)
    out.append(ap / r)
    return out


def brute(q, ql, g, gl, ks, self_search):
    d = distances(q, g)
    rows = []
    for i in range(len(q)):
        order = np.lexsort((np.arange(len(g)), d[i]))
        if self_search:
            order = order[order != i]
        rel = gl[order] == ql[i]
        if rel.sum():
            rows.append(ranking_metrics(rel, int(rel.sum()), ks))
    return np.mean(rows, axis=0)


@pytest.mark.parametrize("self_search", [True, False])
def test_hamming_metrics_by_the_tie_rule_equal_a_brute_force(self_search):
    rng = np.random.default_rng(1)
    pool = rng.integers(0, 256, size=(6, 2), dtype=np.uint8)  # few distinct codes: ties everywhere
    g, gl = pool[rng.integers(0, 6, 120)], rng.integers(0, 5, 120)
    q, ql = (g, gl) if self_search else (pool[rng.integers(0, 6, 30)], rng.integers(0, 6, 30))
    ks = (1, 3, 10)
    got = hamming_metrics(q, ql, None if self_search else g, None if self_search else gl, ks=ks)
    want = brute(q, ql, g, gl, ks, self_search)
    names = [f"recall@{k}" for k in ks] + ["precision@1", "r_precision", "map@r"]
    np.testing.assert_allclose([got[n] for n in names], want, rtol=0, atol=1e-12)


def test_tie_aware_metrics_are_the_mean_over_every_order_of_the_tied_blocks():
    rng = np.random.default_rng(2)
    pool = np.array([[0b00000000], [0b00000001], [0b00000011], [0b11111111]], dtype=np.uint8)
    g, gl = pool[rng.integers(0, 4, 7)], rng.integers(0, 2, 7)
    q, ql = pool[[0, 1, 2]], np.array([0, 1, 0])
    ks = (1, 2, 4)
    d = distances(q, g)
    rows = []
    for i in range(len(q)):
        rel_all = gl == ql[i]
        if not rel_all.any():
            continue
        per_order = [
            ranking_metrics(rel_all[list(p)], int(rel_all.sum()), ks)
            for p in itertools.permutations(range(len(g)))
            if (np.diff(d[i][list(p)]) >= 0).all()  # an order of the tied blocks
        ]
        rows.append(np.mean(per_order, axis=0))
    got = tie_aware_metrics(q, ql, gallery_codes=g, gallery_labels=gl, ks=ks)
    names = [f"recall@{k}" for k in ks] + ["precision@1", "r_precision", "map@r"]
    np.testing.assert_allclose([got[n] for n in names], np.mean(rows, axis=0), rtol=0, atol=1e-9)
    assert len(set(d.ravel())) < d.size  # the data has ties


def test_map_at_1000_is_the_hashing_literatures_definition():
    rng = np.random.default_rng(3)
    g, gl = rng.integers(0, 256, size=(1500, 1), dtype=np.uint8), rng.integers(0, 3, 1500)
    q, ql = g[:20], gl[:20]
    got = hamming_metrics(q, ql, g, gl)["map@1000"]
    d = distances(q, g)
    aps = []
    for i in range(len(q)):
        order = np.lexsort((np.arange(len(g)), d[i]))[:1000]
        rel = gl[order] == ql[i]
        precision = np.cumsum(rel) / np.arange(1, 1001)
        aps.append((precision * rel).sum() / max(rel.sum(), 1))
    assert got == pytest.approx(np.mean(aps), abs=1e-12)
