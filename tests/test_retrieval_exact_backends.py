"""retrieval_metrics backends: torch and faiss agree (and with the float64 brute force of test_retrieval_exact, ties
included), the blocked CPU top-k is exact, backend choice and errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from simlearn.errors import UserError
from simlearn.evaluation.retrieval import choose_backend, retrieval_metrics
from simlearn.retrieval import exact as neighbours
from simlearn.retrieval import faiss_lib

pytest.importorskip("faiss")


def _margin(d: int) -> float:
    """Twice the rounding error bound of a float32 dot product of two unit vectors (d x 2**-24 each, in any
    summation order): relevant and irrelevant candidates closer than this could swap ranks between two BLAS."""
    return 4 * d * 2.0**-24


def _clustered(seed: int, d: int, sizes, spread: float = 1.3):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    x = rng.normal(size=(len(sizes), d))[labels] + spread * rng.normal(size=(len(labels), d))
    return x.astype(np.float32), labels.astype(np.int64)


def _min_rel_gap(q, q_lab, g, g_lab, self_search: bool, window: int) -> float:
    """Smallest similarity gap between a relevant and an irrelevant candidate among the first ``window`` + 1 of any
    query (exact, float64); ranks beyond the largest k and R cannot change a metric."""
    q = q / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
    g = g / np.linalg.norm(g.astype(np.float64), axis=1, keepdims=True)
    sims = q @ g.T
    if self_search:
        np.fill_diagonal(sims, np.inf)  # the query's own item: first, and never a candidate
    order = np.argsort(-sims, axis=1)
    s = np.take_along_axis(sims, order, axis=1)[:, int(self_search) :]
    rel = (g_lab[order] == q_lab[:, None])[:, int(self_search) :]
    s, rel = s[:, : window + 1], rel[:, : window + 1]
    differs = rel[:, 1:] != rel[:, :-1]  # the closest rel/irrel pair of a row is adjacent in the ranking
    return float((s[:, :-1] - s[:, 1:])[differs].min())


def _separated(d: int, sizes, gallery: bool, max_k: int = 20):
    """Clustered data (the first seed) on which no relevant/irrelevant pair is nearly tied, so the exact ranking,
    and with it every metric, does not depend on float32 rounding in one backend or the other."""
    for seed in range(100):
        x, y = _clustered(seed, d, sizes)
        if gallery:
            is_query = np.arange(len(x)) % 3 == 0
            args = (x[is_query], y[is_query], x[~is_query], y[~is_query])
        else:
            args = (x, y, x, y)
        if _min_rel_gap(*args, self_search=not gallery, window=max(max(sizes), max_k)) > _margin(d):
            return args
    raise AssertionError("no well-separated data set found")


def _both(q, q_lab, g=None, g_lab=None, **kwargs):
    common = {"gallery_embeddings": g, "gallery_labels": g_lab, **kwargs}
    return (
        retrieval_metrics(q, q_lab, backend="torch", **common),
        retrieval_metrics(q, q_lab, backend="faiss", **common),
    )


def _assert_same(a: dict, b: dict, tol: float = 1e-6):
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=tol), key


@pytest.mark.parametrize("d", [8, 32])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_backends_agree_self_search(d, chunk_size):
    # a singleton class: its query is lone (no other item of its class) and left out by both backends
    q, q_lab, _, _ = _separated(d, (60, 45, 30, 20, 10, 6, 1), gallery=False)
    torch_out, faiss_out = _both(q, q_lab, ks=(1, 5, 10), chunk_size=chunk_size)
    _assert_same(torch_out, faiss_out)
    assert faiss_out["num_lone_queries"] == 1.0
    assert 0.2 < faiss_out["map@r"] < 0.95  # not trivial


@pytest.mark.parametrize("d", [8, 32])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_backends_agree_separate_gallery(d, chunk_size):
    q, q_lab, g, g_lab = _separated(d, (70, 50, 40, 30, 20, 12), gallery=True)
    # class 5 only among the queries: lone queries
    g, g_lab = g[g_lab != 5], g_lab[g_lab != 5]
    n_lone = int((q_lab == 5).sum())
    torch_out, faiss_out = _both(q, q_lab, g, g_lab, ks=(1, 3, 20), chunk_size=chunk_size)
    _assert_same(torch_out, faiss_out)
    assert faiss_out["num_lone_queries"] == n_lone > 0


def test_backends_agree_on_torch_tensors_and_chunks():
    q, q_lab, _, _ = _separated(16, (40, 30, 20, 10, 2), gallery=False)
    ref = retrieval_metrics(q, q_lab, backend="torch")
    as_tensor = torch.from_numpy(q).double()
    for chunk_size in (1, 3, 1000):
        _assert_same(ref, retrieval_metrics(as_tensor, q_lab, backend="faiss", chunk_size=chunk_size))


def test_faiss_fortran_order_and_float64_inputs():
    q, q_lab, g, g_lab = _separated(8, (70, 50, 40, 30, 20, 12), gallery=True)
    ref = retrieval_metrics(q, q_lab, gallery_embeddings=g, gallery_labels=g_lab, backend="torch")
    out = retrieval_metrics(
        np.asfortranarray(q, dtype=np.float64),
        q_lab,
        gallery_embeddings=np.asfortranarray(g),
        gallery_labels=g_lab,
        backend="faiss",
    )
    _assert_same(ref, out)


def test_faiss_self_search_drops_own_item_even_with_duplicates():
    # exact duplicates tie with the query's own item: the own item must still be left out, never another one twice
    rng = np.random.default_rng(0)
    x = np.repeat(rng.normal(size=(30, 8)), 3, axis=0).astype(np.float32)
    search = neighbours._faiss_search(neighbours.search_data(x))
    scores, idx = search(np.arange(10, 50), 5)
    assert idx.shape == scores.shape == (40, 5)
    assert not (idx == np.arange(10, 50)[:, None]).any()
    assert all(len(set(row)) == 5 for row in idx.tolist())
    labels = np.arange(len(x)) // 3
    torch_out, faiss_out = _both(x, labels, ks=(1, 2))
    assert torch_out["recall@1"] == faiss_out["recall@1"] == 1.0  # a duplicate is always the nearest neighbour


# ---------------------------------------------------------------- the blocked CPU top-k


@pytest.mark.parametrize(("n", "k", "block"), [(2000, 10, 4), (2003, 7, 5), (997, 3, 16), (5000, 50, 8)])
def test_blocked_topk_is_exact(monkeypatch, n, k, block):
    monkeypatch.setattr(neighbours, "_TOPK_BLOCK", block)
    gen = torch.Generator().manual_seed(n)
    sims = torch.rand(33, n, generator=gen)
    sims[torch.arange(33), torch.arange(33) * 3] = float("-inf")  # self-search exclusions
    assert n // block >= neighbours._TOPK_MIN_BLOCKS_PER_K * k  # the blocked path is taken
    values, idx = neighbours._topk(sims, k)
    expected = sims.topk(k, dim=1)
    assert torch.equal(idx, expected.indices)  # no ties in random floats: the same columns in the same order
    assert torch.equal(values, expected.values)
    # with many exact ties the values (not the tie order, which the exact search sets itself) must still match
    tied = (sims * 20).floor()
    tied_values, tied_idx = neighbours._topk(tied, k)
    assert torch.equal(tied.gather(1, tied_idx), tied.topk(k, dim=1).values)
    assert torch.equal(tied_values, tied.topk(k, dim=1).values)


def test_blocked_topk_metrics_match_plain_topk(monkeypatch):
    x, y = _clustered(3, 16, (30,) * 40)
    plain = retrieval_metrics(x, y, backend="torch", chunk_size=300)
    monkeypatch.setattr(neighbours, "_TOPK_BLOCK", 4)  # 1200 // 4 blocks >= 4 x k (29): blocked
    blocked = retrieval_metrics(x, y, backend="torch", chunk_size=300)
    assert blocked == pytest.approx(plain, abs=1e-12)


# ---------------------------------------------------------------- choosing the backend


def test_choose_backend(monkeypatch):
    big = neighbours.FAISS_MIN_GALLERY
    assert choose_backend("auto", "cpu", big) == "faiss"
    assert choose_backend("auto", "cpu", big - 1) == "torch"
    assert choose_backend("auto", torch.device("cuda"), 10 * big) == "torch"
    assert choose_backend("torch", "cpu", 10 * big) == "torch"
    assert choose_backend("faiss", "cpu", 10) == "faiss"
    monkeypatch.setattr(neighbours, "faiss_installed", lambda: False)
    assert choose_backend("auto", "cpu", 10 * big) == "torch"
    with pytest.raises(UserError, match="backend must be one of"):
        choose_backend("annoy", "cpu", 10)


def test_auto_uses_faiss_for_large_cpu_galleries(monkeypatch):
    calls = []
    real = neighbours._faiss_search
    monkeypatch.setattr(neighbours, "_faiss_search", lambda *a: calls.append(1) or real(*a))
    x, y = _clustered(4, 8, (30, 20, 10))
    monkeypatch.setattr(neighbours, "FAISS_MIN_GALLERY", len(x))
    retrieval_metrics(x, y)
    assert calls
    calls.clear()
    monkeypatch.setattr(neighbours, "FAISS_MIN_GALLERY", len(x) + 1)
    retrieval_metrics(x, y)
    assert not calls


def test_faiss_missing_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    x, y = _clustered(5, 8, (20, 10))
    with pytest.raises(UserError, match="pip install faiss-cpu"):
        retrieval_metrics(x, y, backend="faiss")
    monkeypatch.setattr(neighbours, "faiss_installed", lambda: False)
    monkeypatch.setattr(neighbours, "FAISS_MIN_GALLERY", 1)
    assert retrieval_metrics(x, y)["num_queries"] == len(x)  # auto falls back to torch


def test_a_faiss_that_is_present_but_broken_is_left_out_of_the_automatic_choices(monkeypatch, caplog):
    # e.g. its shared library missing or built for another numpy: the automatic backend and k-means fall back to
    # torch and scikit-learn (as when faiss is absent); only an explicit backend='faiss' is refused
    from simlearn.evaluation.clustering import kmeans_labels

    def broken():
        raise UserError("backend='faiss' needs the faiss package, which cannot be imported (libfaiss.so: no such file)")

    monkeypatch.setattr(faiss_lib, "import_faiss", broken)  # what faiss_installed tries
    monkeypatch.setattr(neighbours, "import_faiss", broken)  # what an explicit backend='faiss' imports
    neighbours.faiss_installed.cache_clear()
    try:
        assert neighbours.faiss_installed() is False
        assert "cannot be imported" in caplog.text
        x, y = _clustered(6, 8, (30, 20, 10))
        assert set(kmeans_labels(x, 3).tolist()) == {0, 1, 2}
        assert choose_backend("auto", "cpu", 10 * neighbours.FAISS_MIN_GALLERY) == "torch"
        with pytest.raises(UserError, match="cannot be imported"):
            choose_backend("faiss", "cpu", 10)
    finally:
        neighbours.faiss_installed.cache_clear()


# ---------------------------------------------------------------- top_k (plots, simlearn-search)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_top_k_matches_brute_force(monkeypatch, exclude_self):
    monkeypatch.setattr(neighbours, "_TOPK_BLOCK", 4)  # 300 // 4 blocks >= 4 x k: the blocked CPU top-k
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6)).astype(np.float32) * rng.uniform(0.5, 3.0, size=(300, 1)).astype(np.float32)
    queries = x if exclude_self else x[:40]
    cos, idx = neighbours.top_k(queries, x, k=5, exclude_self=exclude_self, chunk_size=17)
    x64 = x.astype(np.float64)
    unit = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    sims = unit[: len(queries)] @ unit.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(cos, np.take_along_axis(sims, expected, axis=1), rtol=0, atol=1e-14)
    capped_cos, capped = neighbours.top_k(x[:3], x[:3], k=10, exclude_self=True)
    assert capped.shape == capped_cos.shape == (3, 2)  # k capped at the other items
