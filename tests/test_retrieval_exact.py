"""The one neighbour search is exact, ties included: neighbour lists and every metric equal a float64 brute force
whose ties go to the lower gallery index, for both backends, in 2-D (where float32 cosines of different neighbours
coincide), 3-D and 64-D, self-search and query/gallery, with exact duplicate vectors forcing exact ties."""

from __future__ import annotations

import concurrent.futures
import functools
import threading

import numpy as np
import pytest
import torch

from simlearn.errors import UserError
from simlearn.evaluation import knn_accuracy, retrieval_metrics
from simlearn.retrieval import CandidateSource, FaissIndex, exact, faiss_lib, gallery_index, inputs
from simlearn.retrieval.vectordb import LanceCandidates

BACKENDS = [
    "torch",
    pytest.param("faiss", marks=pytest.mark.skipif(not faiss_lib.faiss_installed(), reason="no faiss")),
]
KS = (1, 5, 10)
KNN_K = 5


# ---------------------------------------------------------------- the reference: a float64 brute force


def float64_cosines(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    """cos = a·b / (|a| |b|) in float64 for every pair, with numpy's own row sums (the same for equal rows)."""
    q64, g64 = q.astype(np.float64), g.astype(np.float64)
    q_norms, g_norms = np.sqrt((q64 * q64).sum(axis=1)), np.sqrt((g64 * g64).sum(axis=1))
    cos = np.empty((len(q), len(g)))
    for i in range(0, len(q), 64):  # 64 queries at a time: (64, G, d) products
        cos[i : i + 64] = (q64[i : i + 64, None, :] * g64[None]).sum(axis=2) / q_norms[i : i + 64, None] / g_norms
    return cos


def reference_order(q: np.ndarray, g: np.ndarray, self_search: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every query's candidates sorted by (-cos, gallery index), and the cosines: the rule of the search."""
    cos = float64_cosines(q, g)
    if self_search:
        np.fill_diagonal(cos, -np.inf)  # the own item sorts last and is cut off
    index = np.broadcast_to(np.arange(len(g)), cos.shape)
    order = np.lexsort((index, -cos), axis=-1)
    return order[:, : len(g) - int(self_search)], cos


def reference_metrics(order: np.ndarray, q_lab: np.ndarray, g_lab: np.ndarray) -> dict[str, float]:
    """recall@k, precision@1, R-precision, MAP@R (lone queries left out) and kNN accuracy from a full ranking."""
    rel = g_lab[order] == q_lab[:, None]
    r = rel.sum(axis=1)
    keep = r > 0
    out = {f"recall@{k}": float(rel[keep, :k].any(axis=1).mean()) for k in KS}
    out["precision@1"] = float(rel[keep, 0].mean())
    r_precision, average_precision = [], []
    for row, r_q in zip(rel[keep], r[keep], strict=True):
        top = row[:r_q]
        r_precision.append(top.sum() / r_q)
        average_precision.append((np.cumsum(top) / np.arange(1, r_q + 1) * top).sum() / r_q)
    out["r_precision"] = float(np.mean(r_precision))
    out["map@r"] = float(np.mean(average_precision))
    out["num_queries"], out["num_lone_queries"] = float(keep.sum()), float((~keep).sum())
    votes = g_lab[order[:, :KNN_K]]
    predicted = []
    for row in votes:
        labels, counts = np.unique(row, return_counts=True)  # sorted labels: the first most voted is the smallest
        predicted.append(labels[np.argmax(counts)])
    out[f"knn_accuracy@{KNN_K}"] = float((np.array(predicted) == q_lab).mean())
    return out


# ---------------------------------------------------------------- the data


@functools.cache
def tie_data(d: int, unit: bool, seed: int = 0, n: int = 1200, classes: int = 5):
    """Random Gaussian embeddings of 5 classes, 80 of them replaced by exact copies of others (some scaled by 2 or
    1/2, which changes no cosine exactly), with labels of their own: exact ties that only the index rule orders.
    ``unit``: rows scaled to unit length in float32 first, as trained embeddings are (searched without a copy)."""
    rng = np.random.default_rng([seed, d])
    x = rng.normal(size=(n, d)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    rows = rng.permutation(n)
    source, copy = rows[:80], rows[80:160]
    x[copy] = x[source] * rng.choice(np.array([1, 1, 2, 0.5], dtype=np.float32), size=(80, 1))
    if unit:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def split(x: np.ndarray, labels: np.ndarray, mode: str):
    """``(q, q_lab, g, g_lab)``: everything against itself, or the first 300 items against the other 900."""
    if mode == "self":
        return x, labels, None, None
    return x[:300], labels[:300], x[300:], labels[300:]


@functools.cache
def reference(d: int, unit: bool, mode: str):
    q, q_lab, g, g_lab = split(*tie_data(d, unit), mode)
    self_search = g is None
    order, cos = reference_order(q, q if self_search else g, self_search)
    return order, cos, reference_metrics(order, q_lab, q_lab if self_search else g_lab)


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["self", "gallery"])
@pytest.mark.parametrize("unit", [False, True], ids=["raw", "unit"])
@pytest.mark.parametrize("d", [2, 3, 64])
def test_metrics_equal_a_float64_brute_force_ties_to_the_lower_index(d, unit, mode, backend):
    q, q_lab, g, g_lab = split(*tie_data(d, unit), mode)
    *_, expected = reference(d, unit, mode)
    gallery = {"gallery_embeddings": g, "gallery_labels": g_lab}
    metrics = retrieval_metrics(q, q_lab, ks=KS, knn_k=KNN_K, backend=backend, **gallery)
    assert metrics == pytest.approx(expected, abs=1e-12, rel=0)
    # without kNN accuracy only relevance matters, and fewer near-ties are re-scored: the same metrics
    retrieval_only = {key: value for key, value in expected.items() if not key.startswith("knn")}
    assert retrieval_metrics(q, q_lab, ks=KS, backend=backend, **gallery) == pytest.approx(retrieval_only, abs=1e-12)
    assert knn_accuracy(q, q_lab, k=KNN_K, backend=backend, **gallery) == expected[f"knn_accuracy@{KNN_K}"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["self", "gallery"])
@pytest.mark.parametrize("unit", [False, True], ids=["raw", "unit"])
@pytest.mark.parametrize("d", [2, 3, 64])
def test_neighbour_lists_equal_a_float64_brute_force(d, unit, mode, backend):
    q, _, g, _ = split(*tie_data(d, unit), mode)
    order, cos, _ = reference(d, unit, mode)
    similarities, indices = exact.top_k(q, q if g is None else g, 12, exclude_self=g is None, backend=backend)
    np.testing.assert_array_equal(indices, order[:, :12])
    np.testing.assert_allclose(similarities, np.take_along_axis(cos, indices, axis=1), rtol=0, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_size", [1, 7, 500])
def test_chunking_changes_nothing(backend, chunk_size):
    x, labels = tie_data(2, False)
    *_, expected = reference(2, False, "self")
    metrics = retrieval_metrics(x, labels, ks=KS, knn_k=KNN_K, backend=backend, chunk_size=chunk_size)
    assert metrics == pytest.approx(expected, abs=1e-12, rel=0)


def recording(make_search, counts: list[int]):
    """A backend factory whose searches record how many candidates they were asked for."""

    def make(*args, **kwargs):
        search = make_search(*args, **kwargs)

        def recorded(rows, count):
            counts.append(count)
            return search(rows, count)

        return recorded

    return make


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_beyond_the_extra_candidates_are_searched_again(monkeypatch, backend):
    """40 copies of one vector (labels alternating) and a query among them: its top 5 are 5 of 39 exact ties, far
    more than k + EXTRA_CANDIDATES, so its first float32 candidates cannot be certain; searched again, the top 5
    must be the copies with the lowest indices."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x[100:140] = x[7] * 4  # a power of two: every cosine among the 41 copies is exactly the same
    labels = np.arange(300) % 3
    monkeypatch.setattr(exact, "EXTRA_CANDIDATES", 1)
    counts = []
    for name in ("_torch_search", "_faiss_search"):
        make = getattr(exact, name)
        monkeypatch.setattr(exact, name, recording(make, counts))
    order, _ = reference_order(x, x, True)
    _, indices = exact.top_k(x, x, 5, exclude_self=True, backend=backend, chunk_size=64)
    assert max(counts) >= 40 > min(counts) == 6  # first k + 1 candidates, then doubled until the ties fit
    np.testing.assert_array_equal(indices, order[:, :5])
    assert indices[7].tolist() == [100, 101, 102, 103, 104]  # equal cosines: the lowest gallery indices
    assert indices[100].tolist() == [7, 101, 102, 103, 104]  # its own item (100) left out
    expected = reference_metrics(order, labels, labels)
    metrics = retrieval_metrics(x, labels, ks=KS, knn_k=KNN_K, backend=backend, chunk_size=64)
    assert metrics == pytest.approx(expected, abs=1e-12, rel=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_query_gets_its_own_number_of_exact_neighbours(monkeypatch, backend):
    """The metrics ask each query for its own number of neighbours (R_q): those places are exact, every place holds
    a gallery row, also when some queries of a chunk are searched again and faiss splits the chunk in blocks."""
    x, _ = tie_data(3, False)
    monkeypatch.setattr(exact, "EXTRA_CANDIDATES", 1)  # exact ties at the k-th place: searched again
    monkeypatch.setattr(exact, "_FAISS_MAX_CHUNK", 7)
    counts = []
    for name in ("_torch_search", "_faiss_search"):
        monkeypatch.setattr(exact, name, recording(getattr(exact, name), counts))
    needed = torch.from_numpy(np.random.default_rng(0).integers(0, 30, len(x)))
    order, _ = reference_order(x, x, True)
    for chunk in exact.neighbour_chunks(inputs.search_data(x), needed, backend, chunk_size=50):
        indices = chunk.indices.numpy()
        assert indices.shape == (chunk.stop - chunk.start, int(needed[chunk.start : chunk.stop].max()))
        assert ((indices >= 0) & (indices < len(x))).all()
        for query, row in enumerate(indices, start=chunk.start):
            np.testing.assert_array_equal(row[: needed[query]], order[query, : needed[query]])
    assert max(counts) > 30  # some queries were searched again with more candidates


def test_every_candidate_searched_is_certain():
    """k = every other item: nothing lies outside the candidates, so no check can fail."""
    x, _ = tie_data(2, False)
    order, _ = reference_order(x[:50], x[:50], True)
    _, indices = exact.top_k(x[:50], x[:50], 100, exclude_self=True)
    assert indices.shape == (50, 49)
    np.testing.assert_array_equal(indices, order)


def test_float64_inputs_are_ranked_by_their_own_values():
    """Gallery items that differ only below float32 resolution: the float32 search cannot tell them apart, the
    ranking must follow the caller's float64 values (re-scored from them, not from float32 copies)."""
    q = np.array([[1.0, 0.0, 0.0]])
    g = np.array([[0.5, 1.0, 0.0], [0.5 - 1e-12, 1.0, 0.0], [0.5 + 1e-12, 1.0, 0.0], [0.0, 1.0, 0.0]])
    assert len(np.unique(g.astype(np.float32), axis=0)) == 2  # the first three are one vector in float32
    similarities, indices = exact.top_k(q, g, 3)
    assert indices.tolist() == [[2, 0, 1]]  # cos = a / sqrt(a² + 1) grows with the first component a
    np.testing.assert_allclose(similarities, float64_cosines(q, g)[:, [2, 0, 1]], rtol=0, atol=1e-15)


def test_score_error_bound_holds():
    """The float32 score of the search against the float64 cosine, on random data of several dims, rows normalised
    here or kept as they are (unit length within the tolerance, even at its edge): never more than the bound."""
    rng = np.random.default_rng(5)
    for d in (2, 16, 64, 512):
        for kind in ("scaled", "unit", "edge of the tolerance"):
            x = rng.normal(size=(400, d)).astype(np.float32) * rng.uniform(0.01, 100, size=(400, 1)).astype(np.float32)
            if kind != "scaled":
                x /= np.linalg.norm(x, axis=1, keepdims=True)
            if kind == "edge of the tolerance":
                x *= np.float32(1 + 0.7 * inputs.UNIT_TOLERANCE)
            data = inputs.search_data(x, None)
            assert (data.queries.data_ptr() == torch.from_numpy(x).data_ptr()) == (kind != "scaled")
            s32 = (data.queries @ data.gallery.T).numpy().astype(np.float64)
            error = np.abs(s32 - float64_cosines(x, x)).max()
            assert error <= exact.score_error_bound(d), (d, kind, error)
    assert exact.score_error_bound(512) == pytest.approx(3.28e-5, rel=0.01)


def test_dtypes_numpy_lacks_are_searched_by_torch_alone():
    """bfloat16 embeddings have no numpy view: norms, unit rows and float64 re-scoring run on torch tensors; the
    result is the float64 brute force of their values all the same."""
    x, labels = tie_data(3, False)
    as_bfloat16 = torch.from_numpy(x).bfloat16()
    values = as_bfloat16.float().numpy()  # exactly the bfloat16 values
    order, _ = reference_order(values, values, True)
    expected = reference_metrics(order, labels, labels)
    assert retrieval_metrics(as_bfloat16, labels, ks=KS, knn_k=KNN_K) == pytest.approx(expected, abs=1e-12, rel=0)
    _, indices = exact.top_k(as_bfloat16, None, 10, exclude_self=True)
    np.testing.assert_array_equal(indices, order[:, :10])


def test_reduced_precision_matmuls_are_turned_off_for_the_search_and_restored():
    x, labels = tie_data(2, False)
    *_, expected = reference(2, False, "self")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        metrics = retrieval_metrics(x, labels, ks=KS, knn_k=KNN_K, backend="torch")
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    assert metrics == pytest.approx(expected, abs=1e-12, rel=0)


def test_a_search_ending_never_lowers_the_precision_under_another_search_still_running():
    """simlearn-serve searches on several threads; the precision is one setting of the whole process."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    b_started, a_ended = threading.Event(), threading.Event()
    seen_by_b = []

    def search_b():
        with exact._ieee_float32():
            b_started.set()
            a_ended.wait(10)
            seen_by_b.append(torch.get_float32_matmul_precision())  # where B's matrix product runs

    try:
        search_a = exact._ieee_float32()
        search_a.__enter__()
        thread = threading.Thread(target=search_b)
        thread.start()
        assert b_started.wait(10)
        search_a.__exit__(None, None, None)
        a_ended.set()
        thread.join(10)
        assert seen_by_b == ["highest"], "search A restored the lower precision while search B was running"
        assert torch.get_float32_matmul_precision() == "medium", "the last search must restore the setting"
    finally:
        torch.set_float32_matmul_precision(before)


def test_concurrent_searches_all_multiply_in_ieee_float32_and_agree_with_one_at_a_time(monkeypatch):
    x, _ = tie_data(2, False)
    queries = [x[i * 40 : (i + 1) * 40] for i in range(8)]
    expected = [exact.top_k(q, x, 5)[1] for q in queries]
    seen = []
    matmul = torch.Tensor.__matmul__

    def spy(a, b):
        seen.append(torch.get_float32_matmul_precision())
        return matmul(a, b)

    before = torch.get_float32_matmul_precision()
    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    torch.set_float32_matmul_precision("medium")
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            found = list(pool.map(lambda i: exact.top_k(queries[i % 8], x, 5)[1], range(64)))
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    assert seen and set(seen) == {"highest"}
    for i, indices in enumerate(found):
        np.testing.assert_array_equal(indices, expected[i % 8])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("mode", ["self", "gallery"])
def test_gpu_search_is_exact_too(mode):
    q, q_lab, g, g_lab = split(*tie_data(2, False), mode)
    *_, expected = reference(2, False, mode)
    on_gpu = {"gallery_embeddings": None if g is None else torch.from_numpy(g).cuda(), "gallery_labels": g_lab}
    metrics = retrieval_metrics(torch.from_numpy(q).cuda(), q_lab, ks=KS, knn_k=KNN_K, **on_gpu)
    assert metrics == pytest.approx(expected, abs=1e-12, rel=0)


def test_top_k_checks_its_arguments():
    x, _ = tie_data(2, False)
    with pytest.raises(UserError, match="k must be an integer"):
        exact.top_k(x, x, 0)
    with pytest.raises(UserError, match="exclude_self=True searches the queries against themselves"):
        exact.top_k(x[:5], x, 3, exclude_self=True)
    with pytest.raises(UserError, match="dim 3"):
        exact.top_k(x, tie_data(3, False)[0], 3)


# ---------------------------------------------------------------- saved faiss indexes


def test_saved_flat_index_is_built_once_reused_rebuilt_when_stale_and_exact(tmp_path):
    pytest.importorskip("faiss")
    x, _ = tie_data(3, False)
    q, g = x[:300], x[300:]
    path = tmp_path / "gallery.faiss"
    built = gallery_index(g, path)
    assert built.how == f"built and saved {path}" and built.exact and path.is_file()
    reused = gallery_index(g, path)
    assert reused.how == f"reused {path}"
    order, cos = reference_order(q, g, False)
    similarities, indices = exact.top_k(q, g, 10, index=reused)
    np.testing.assert_array_equal(indices, order[:, :10])
    np.testing.assert_allclose(similarities, np.take_along_axis(cos, indices, axis=1), rtol=0, atol=1e-15)
    assert "exact" in reused.describe() and "APPROXIMATE" not in reused.describe()
    assert gallery_index(g[::-1], path).how.startswith("built and saved")  # other embeddings: rebuilt
    assert gallery_index(g, None).how == "built in memory"
    with pytest.raises(UserError, match="not a faiss index_factory string"):
        gallery_index(g, None, "NoSuchIndex")
    with pytest.raises(UserError, match="build the index from this gallery"):
        exact.top_k(q, g[:100], 3, index=reused)


def test_an_approximate_index_says_so_and_orders_its_candidates_by_the_rule():
    pytest.importorskip("faiss")
    x, _ = tie_data(3, False)
    q, g = x[:300], x[300:]
    index = gallery_index(g, None, "HNSW32")
    assert not index.exact and "APPROXIMATE" in index.describe()
    similarities, indices = exact.top_k(q, g, 10, index=index)
    cos = float64_cosines(q, g)
    np.testing.assert_allclose(similarities, np.take_along_axis(cos, indices, axis=1), rtol=0, atol=1e-15)
    for row_cos, row_index in zip(similarities, indices, strict=True):  # sorted by (-cos, index)
        assert list(zip(-row_cos, row_index, strict=True)) == sorted(zip(-row_cos, row_index, strict=True))
    order, _ = reference_order(q, g, False)
    assert (indices[:, 0] == order[:, 0]).mean() > 0.9  # approximate, but mostly right on this small gallery


class _BruteForce:
    """A new candidate source is one class: here a numpy brute force over the unit rows, exhaustive."""

    library = "numpy"
    exact = True
    score_slack = 0.0

    def __init__(self, gallery: np.ndarray) -> None:
        self.unit = (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).astype(np.float32)
        self.size, self.dim = self.unit.shape

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = queries @ self.unit.T
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, rows, axis=1), rows.astype(np.int64)

    def describe(self) -> str:
        return "exact (numpy brute force)"


def test_any_class_with_the_candidate_source_interface_plugs_into_the_exact_search():
    x, _ = tie_data(3, False)
    q, g = x[:200], x[200:]
    source = _BruteForce(g)
    assert isinstance(source, CandidateSource)
    # the two sources simlearn ships have the interface too (instances: a protocol with attributes is checked so)
    assert isinstance(gallery_index(g, None), FaissIndex) and isinstance(gallery_index(g, None), CandidateSource)
    assert isinstance(LanceCandidates(None, 3, 2, True, "a table"), CandidateSource)
    order, cos = reference_order(q, g, False)
    similarities, indices = exact.top_k(q, g, 10, index=source)
    np.testing.assert_array_equal(indices, order[:, :10])  # ties and near-ties ordered by the exact rule
    np.testing.assert_allclose(similarities, np.take_along_axis(cos, indices, axis=1), rtol=0, atol=1e-15)
    with pytest.raises(UserError, match=r"the numpy index holds \d+ vectors of dim 3, but the gallery has 100"):
        exact.top_k(q, g[:100], 3, index=source)
