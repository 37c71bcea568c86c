"""Binary codes: packing, the exact Hamming search (ties to the lower gallery index, as the float search), faiss's
binary indexes as a candidate source of the exact search, and float re-ranking of the Hamming candidates; each
against a brute force on small data with many ties."""

from __future__ import annotations

import numpy as np
import pytest

from simlearn.errors import UserError
from simlearn.retrieval.codes import (
    CodeIndex,
    code_index,
    hamming_distances,
    hamming_top_k,
    pack_codes,
    unpack_signs,
)
from simlearn.retrieval.exact import top_k


def brute_hamming(q: np.ndarray, g: np.ndarray, k: int, exclude_self: bool = False) -> tuple[np.ndarray, ...]:
    """Bit by bit on unpacked codes, sorted by (distance, index) with lexsort."""
    qb, gb = np.unpackbits(q, axis=1).astype(int), np.unpackbits(g, axis=1).astype(int)
    dist = (qb[:, None, :] != gb[None, :, :]).sum(axis=2)
    rows = []
    for i, d in enumerate(dist):
        order = np.lexsort((np.arange(len(g)), d))
        if exclude_self:
            order = order[order != i]
        rows.append(order[:k])
    rows = np.array(rows)
    return np.take_along_axis(dist, rows, axis=1), rows


def tied_codes(n: int, bytes_: int = 1, seed: int = 0, distinct: int = 12) -> np.ndarray:
    """Codes drawn from a few distinct ones: exact duplicates and equal distances everywhere."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, size=(distinct, bytes_), dtype=np.uint8)
    return pool[rng.integers(0, distinct, size=n)]


def test_packing_is_the_sign_pattern_in_whole_bytes():
    x = np.array([[0.5, -1, 0, 2, -3, 1, 1, -1, 1, 1, 1, 1, -1, -1, -1, -1]], dtype=np.float32)
    codes = pack_codes(x)
    assert codes.dtype == np.uint8 and codes.shape == (1, 2)
    assert codes.tolist() == [[0b10010110, 0b11110000]]  # 0 is not > 0
    assert unpack_signs(codes).tolist() == [[1, -1, -1, 1, -1, 1, 1, -1, 1, 1, 1, 1, -1, -1, -1, -1]]
    with pytest.raises(UserError, match="multiple of 8"):
        pack_codes(np.ones((2, 12)))


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
@pytest.mark.parametrize("bytes_", [1, 3, 8, 9])  # faiss: counting k-selection up to 64 bits, its heap at 72
@pytest.mark.parametrize("exclude_self", [False, True])
def test_hamming_top_k_equals_a_brute_force_with_the_tie_rule(bytes_, exclude_self, backend):
    g = tied_codes(300, bytes_, seed=bytes_)
    q = g if exclude_self else tied_codes(40, bytes_, seed=bytes_ + 7)
    want_d, want_i = brute_hamming(q, g, 25, exclude_self)
    for chunk in (None, 7):
        got = hamming_top_k(
            q, None if exclude_self else g, 25, exclude_self=exclude_self, chunk_size=chunk, backend=backend
        )
        np.testing.assert_array_equal(got.indices, want_i)
        np.testing.assert_array_equal(got.distances, want_d)
    np.testing.assert_array_equal(
        np.take_along_axis(hamming_distances(q, g), want_i, axis=1), want_d
    )  # the full matrix agrees


@pytest.mark.parametrize("bits", [16, 64, 128])
def test_faiss_and_numpy_hamming_searches_return_the_same_ranking(bits):
    """The default search (faiss when installed) returns numpy's exact ranking, indices included, on random codes
    (ties at every distance), deep k and leave-one-out; every query's own item left out even where its duplicates
    with lower indices fill its k + 1 nearest."""
    rng = np.random.default_rng(bits)
    g = rng.integers(0, 256, (6000, bits // 8), dtype=np.uint8)
    g[3000:3100] = g[0]  # 101 equal codes: item 0's and theirs k + 1 nearest are all at distance 0
    for k, exclude_self in ((10, False), (700, False), (50, True)):
        q = g if exclude_self else g[::37]
        want = hamming_top_k(q, None if exclude_self else g, k, exclude_self=exclude_self, backend="numpy")
        got = hamming_top_k(q, None if exclude_self else g, k, exclude_self=exclude_self)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.distances, want.distances)


@pytest.mark.parametrize("factory", ["exact", "Flat"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_a_code_gallery_through_the_exact_search_is_the_hamming_ranking(factory, exclude_self):
    """top_k on the ±1 signs with a code index as its candidate source: faiss's order among equal distances is its
    own, the exact search restores the tie rule (ties far beyond the extra candidates included)."""
    g = tied_codes(500, 2, seed=3, distinct=6)
    q = g if exclude_self else tied_codes(30, 2, seed=4, distinct=6)
    index = code_index(g, factory)
    assert index.exact
    got = top_k(unpack_signs(q), None if exclude_self else unpack_signs(g), 40, exclude_self=exclude_self, index=index)
    want_d, want_i = brute_hamming(q, g, 40, exclude_self)
    np.testing.assert_array_equal(got.indices, want_i)
    np.testing.assert_allclose(got.similarities, 1 - 2 * want_d / 16, atol=1e-12)


def test_hnsw_codes_are_approximate_and_ordered_by_the_rule():
    g = tied_codes(400, 8, seed=5, distinct=400)
    index = code_index(g, "HNSW32")
    assert not index.exact and "APPROXIMATE" in index.describe()
    got = top_k(unpack_signs(g[:20]), unpack_signs(g), 10, index=index)
    dist = hamming_distances(g[:20], g)
    found = np.take_along_axis(dist, got.indices, axis=1)
    assert (np.diff(found, axis=1) >= 0).all()
    assert (got.indices[:, 0] == np.arange(20)).all()  # each code finds itself first


@pytest.mark.parametrize("factory", ["exact", "Flat"])
def test_float_reranking_is_the_float_search_over_the_hamming_candidates(factory):
    rng = np.random.default_rng(0)
    floats = rng.normal(size=(400, 16)).astype(np.float32)
    floats[200:] = floats[:200]  # exact float duplicates: ties for the float rule as well
    queries = rng.normal(size=(25, 16)).astype(np.float32)
    g, q = pack_codes(floats), pack_codes(queries)
    depth, k = 30, 10
    got = top_k(queries, floats, k, index=code_index(g, factory).reranking(depth))
    _, cand = brute_hamming(q, g, depth)  # the depth nearest codes, by the tie rule
    unit_g = floats / np.linalg.norm(floats.astype(np.float64), axis=1, keepdims=True)
    unit_q = queries / np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)
    cut = 0  # queries whose items tied at the depth-th distance do not all fit: the tie rule picks among them
    for i in range(len(q)):
        d = hamming_distances(q[i : i + 1], g)[0]
        cut += int((d[cand[i]] == d[cand[i][-1]]).sum() < (d == d[cand[i][-1]]).sum())
        cos = (unit_g[cand[i]] * unit_q[i]).sum(axis=1)  # row by row: equal rows give equal cosines (BLAS may not)
        want = cand[i][np.lexsort((cand[i], -cos))][:k]
        np.testing.assert_array_equal(got.indices[i], want)
    assert cut > 5  # the test can tell an index's own choice among the tied from the tie rule's


class ReversedTies:
    """An exhaustive binary index (faiss's ``search`` interface) that returns the count nearest items with equal
    distances in the reverse order of the rule, the higher row first: the order an index may choose."""

    def __init__(self, codes: np.ndarray) -> None:
        self.codes, self.calls = codes, []

    def search(self, query_codes: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(count)
        d = hamming_distances(query_codes, self.codes)
        order = np.lexsort((-np.arange(len(self.codes))[None, :].repeat(len(d), 0), d), axis=1)[:, :count]
        return np.take_along_axis(d, order, axis=1), order


@pytest.mark.parametrize("depth", [None, 30])
def test_an_exhaustive_index_with_its_own_tie_order_gives_the_tie_rule(depth):
    """The items tied at the k-th distance are asked for until their block is whole, then the rule picks: the same
    top k (and re-ranking candidates) as simlearn's own search, whatever order the index returns ties in."""
    g = tied_codes(300, 2, seed=8, distinct=5)
    q = tied_codes(20, 2, seed=9, distinct=5)
    index = ReversedTies(g)
    source = CodeIndex(g, "lancedb", index=index)
    assert source.exact
    distances, rows = source.hamming(q, 12)
    want_d, want_i = brute_hamming(q, g, 12)
    np.testing.assert_array_equal(rows, want_i)
    np.testing.assert_array_equal(distances, want_d)
    assert max(index.calls) > 24  # tied blocks longer than twice k: asked again
    assert not np.array_equal(index.search(q, 12)[1], want_i)  # the index's own order is not the rule's
    floats = unpack_signs(g)
    searched = source if depth is None else source.reranking(depth)
    got = top_k(unpack_signs(q), floats, 10, index=searched)
    np.testing.assert_array_equal(got.indices, top_k(unpack_signs(q), floats, 10, index=code_index(g)).indices)


def test_bad_codes_and_bit_counts_are_one_clear_line():
    with pytest.raises(UserError, match="uint8"):
        hamming_top_k(np.ones((3, 2), dtype=np.float32), None, 1, exclude_self=True)
    with pytest.raises(UserError, match="bits"):
        hamming_top_k(np.zeros((3, 2), np.uint8), np.zeros((3, 4), np.uint8), 1)
    with pytest.raises(UserError, match="not a code search"):
        code_index(np.zeros((3, 2), np.uint8), "IVF")
    with pytest.raises(UserError, match=r"backend must be one of \['auto', 'faiss', 'numpy'\]"):
        hamming_top_k(np.zeros((3, 2), np.uint8), None, 1, backend="torch")
