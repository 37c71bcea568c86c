"""unit_rows and angle_deg: the one unit-normalisation and the one cosine-to-angle of simlearn's evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simlearn.retrieval.vectors import angle_deg, row_dots, row_norms, unit_rows


def test_unit_rows_numpy_and_torch_agree_and_keep_their_kind():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 7)) * rng.uniform(0.1, 10, size=(50, 1))
    expected = x / np.linalg.norm(x, axis=1, keepdims=True)
    as_numpy = unit_rows(x)
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    np.testing.assert_allclose(as_numpy, expected, atol=1e-7)
    as_tensor = unit_rows(torch.from_numpy(x))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32
    np.testing.assert_array_equal(as_tensor.numpy(), as_numpy)  # one float64 division, rounded once
    np.testing.assert_allclose(unit_rows(x, np.float64), expected, rtol=0, atol=1e-15)
    assert unit_rows(torch.from_numpy(x), torch.float64).dtype == torch.float64
    np.testing.assert_allclose(unit_rows(x[0], np.float64), expected[0], atol=1e-15)  # a single vector


def test_zero_nan_and_extreme_rows():
    x = np.array([[0.0, 0.0], [np.nan, 1.0], [3e38, 3e38], [1e-40, 1e-40], [3.0, 4.0]], dtype=np.float32)
    out = unit_rows(x)
    assert (out[0] == 0).all()  # zero stays zero
    assert np.isnan(out[1]).any()  # NaN stays NaN, never a made-up direction
    np.testing.assert_allclose(out[2:], [[2**-0.5, 2**-0.5], [2**-0.5, 2**-0.5], [0.6, 0.8]], atol=1e-7)
    exact = [math.hypot(*row) for row in x[2:].astype(np.float64)]  # 1e-40 is a subnormal: not quite 1e-40
    np.testing.assert_allclose(row_norms(x[2:]), exact, rtol=1e-15)


def test_unit_length_rows_are_returned_without_a_copy():
    x = unit_rows(np.random.default_rng(1).normal(size=(100, 16)))
    assert unit_rows(x, tolerance=1e-6) is x
    t = torch.from_numpy(x)
    assert unit_rows(t, tolerance=1e-6).data_ptr() == t.data_ptr()
    assert unit_rows(x * 1.01, tolerance=1e-6) is not x  # beyond the tolerance: normalised


def test_angle_deg_scalars_arrays_and_nan():
    assert angle_deg(0.5) == pytest.approx(60.0)
    assert angle_deg(1.0000001) == 0.0 and angle_deg(-1.0000001) == 180.0  # rounding outside [-1, 1] is clipped
    assert math.isnan(angle_deg(float("nan")))  # not 180°
    assert math.isnan(angle_deg(np.float32("nan")))
    np.testing.assert_allclose(angle_deg(np.array([1.0, 0.0, -1.0, np.nan])), [0.0, 90.0, 180.0, np.nan])
    np.testing.assert_allclose(angle_deg(torch.tensor([[0.5]])), [[60.0]])
    assert isinstance(angle_deg(np.float64(0.5)), float)


@pytest.mark.parametrize("d", [1, 2, 3, 7, 64, 100, 512, 513, 1000])
def test_equal_rows_give_bitwise_equal_dots_wherever_they_are(d):
    """The tie rule needs it: two exact duplicates must get the same float64 cosine, whatever block, position or
    memory alignment their rows come in, for numpy (einsum) and torch (pairwise sums) alike."""
    rng = np.random.default_rng(d)
    rows = np.repeat(rng.standard_normal((4, d)), 37, axis=0)  # 4 distinct rows, each 37 times in a row
    other = np.repeat(rng.standard_normal((4, d)), 37, axis=0)
    expected = row_dots(rows, other)
    assert all(len(np.unique(expected[i * 37 : (i + 1) * 37])) == 1 for i in range(4))
    buffer = np.zeros(rows.size + 8)
    for shift in range(4):  # other memory alignments
        view = buffer[shift : shift + rows.size].reshape(rows.shape)
        view[:] = rows
        np.testing.assert_array_equal(row_dots(view, other), expected)
    for start in (0, 5, 36, 100):  # other blocks of rows
        np.testing.assert_array_equal(row_dots(rows[start:], other[start:]), expected[start:])
    as_tensors = row_dots(torch.from_numpy(rows), torch.from_numpy(other)).numpy()
    assert all(len(np.unique(as_tensors[i * 37 : (i + 1) * 37])) == 1 for i in range(4))
    np.testing.assert_allclose(as_tensors, expected, rtol=1e-12, atol=1e-12)
