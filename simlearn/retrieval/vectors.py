"""Unit vectors and angles: the one place where simlearn scales embeddings to unit length and turns cosines into
angles (the evaluation reports, the retrieval metrics and ``simlearn-search`` all use these).

Norms are computed in float64, block by block of rows, so that float32 values whose squares overflow or underflow
float32 are still scaled correctly, the rounding of the result is the only error (at most 2**-24 per component of a
float32 result, see :func:`simlearn.retrieval.exact.score_error_bound`), and no float64 copy of a large array
is ever held. NaN stays NaN: a row holding one comes out NaN, an angle of a NaN cosine is NaN (never 180°).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar, overload

import numpy as np
import torch

__all__ = ["angle_deg", "as_numpy", "numpy_view", "pairwise_row_sums", "row_dots", "row_norms", "unit_rows"]

Array = TypeVar("Array", np.ndarray, torch.Tensor)

#: float64 entries per block of rows converted at a time (1 MB): bounds the extra memory of a pass, and a block
#: that stays in the CPU cache makes the pass 2-3x faster than 32 MB blocks. CPU tensors go through numpy: its
#: single-threaded ops do not stall on a busy machine, where torch's threaded small ops were measured 10-25x
#: slower (2 cores shared with other work)
_BLOCK_FLOATS = 2**17
#: a norm below this counts as zero: the row is left as it is (all zeros) rather than divided by nothing
_TINY = 1e-300


#: on a GPU, where each block costs kernel launches rather than cache misses: 128 MB
_GPU_BLOCK_FLOATS = 2**24


def as_numpy(x: Any) -> np.ndarray:
    """Any array (a tensor on any device, with or without grad, or anything numpy takes) as a numpy array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def numpy_view(x: torch.Tensor) -> np.ndarray | None:
    """The numpy array sharing the memory of a CPU tensor (None on a GPU, or for dtypes numpy lacks)."""
    if x.device.type != "cpu" or x.requires_grad:
        return None
    try:
        return x.numpy()
    except (TypeError, RuntimeError):  # bfloat16 and other dtypes numpy does not have
        return None


_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def _block_rows(x: np.ndarray | torch.Tensor) -> int:
    on_gpu = isinstance(x, torch.Tensor) and x.device.type != "cpu"
    return max(1, (_GPU_BLOCK_FLOATS if on_gpu else _BLOCK_FLOATS) // max(1, int(x.shape[-1])))


def pairwise_row_sums(x: Array) -> Array:
    """The sum of each row of the 2-D float ``x`` by pairwise halving, with elementwise adds only: every row is
    summed in the same order whatever the number of rows, the block it comes in or the device, so equal rows give
    bitwise equal sums. (A reduction kernel may split a row differently by shape or device, which would break the
    exact tie of two duplicate embeddings.) Pairwise summation is also accurate: error ~ log2(d) roundings.
    ``x`` is overwritten (it is scratch: the callers pass a product they no longer need)."""
    width = x.shape[1]
    while width > 1:
        half = width // 2
        x[:, :half] += x[:, half : 2 * half]
        if width % 2:  # odd: the last column moves next to the sums and is added in a later round
            x[:, half] = x[:, width - 1]
        width = half + width % 2
    return x[:, 0]


def row_dots(a: Array, b: Array) -> Array:
    """The dot product of each pair of rows of the 2-D float64 ``a`` and ``b`` (the same shape), such that equal
    pairs of rows give bitwise equal results wherever they are: exact duplicates must tie exactly.

    numpy arrays: ``einsum`` over C-contiguous float64 rows, one call of its sum-of-products kernel per row over
    the row's d values, without threads or casting buffers, so the summation order depends on d alone (checked
    for many d and alignments in tests/test_retrieval_vectors.py); 3x faster than halving. Tensors: the product
    summed by :func:`pairwise_row_sums` (elementwise ops only: the same order on any device, for any number of rows).
    """
    if isinstance(a, torch.Tensor):
        return pairwise_row_sums(a * b)
    return np.einsum("ij,ij->i", np.ascontiguousarray(a), np.ascontiguousarray(b))


def row_norms(x: Array) -> Array:
    """The Euclidean norm of every row (vector along the last axis) of ``x``, computed in float64.

    Returns float64 of shape ``x.shape[:-1]``: a numpy array for a numpy input, else a tensor on ``x``'s device.
    Rows with NaN or inf have a non-finite norm; converting blocks of rows keeps the extra memory at 1 MB; equal
    rows have bitwise equal norms (:func:`row_dots`).
    """
    if isinstance(x, torch.Tensor) and (view := numpy_view(x.detach())) is not None:
        return torch.from_numpy(row_norms(view))
    if isinstance(x, torch.Tensor):
        flat = x.detach().reshape(-1, x.shape[-1])
        norms = torch.empty(len(flat), dtype=torch.float64, device=x.device)
        step = _block_rows(flat)
        for i in range(0, len(flat), step):
            block = flat[i : i + step].to(torch.float64)
            norms[i : i + step] = pairwise_row_sums(block * block).sqrt()
        return norms.reshape(x.shape[:-1])
    x = np.asarray(x)
    flat = x.reshape(-1, x.shape[-1])
    norms = np.empty(len(flat), dtype=np.float64)
    step = _block_rows(flat)
    for i in range(0, len(flat), step):
        block = flat[i : i + step].astype(np.float64)
        norms[i : i + step] = np.sqrt(row_dots(block, block))
    return norms.reshape(x.shape[:-1])


def unit_rows(x: Array, dtype: Any = None, *, tolerance: float = 0.0, norms: Array | None = None) -> Array:
    """``x`` with every row (vector along the last axis) scaled to unit length, as ``dtype`` (float32 unless given:
    ``np.float64`` or ``torch.float64``, matching the input's library, for reports that want it).

    A numpy input gives a numpy array, a tensor a tensor on the same device. The division is done in float64 and
    rounded once to ``dtype``. An all-zero row stays zero; a row with NaN or inf comes out non-finite (NaN).
    With ``tolerance`` > 0, an ``x`` whose rows all have norms within ``tolerance`` of 1 is returned as it is
    (converted to ``dtype`` only if it has another): no normalised copy of a large array of trained embeddings,
    which are unit length up to float32 rounding. ``norms`` (from :func:`row_norms`) saves computing them again.
    """
    is_tensor = isinstance(x, torch.Tensor)
    if is_tensor:
        x = x.detach()
        dtype = dtype or torch.float32
        view = numpy_view(x)
        if view is not None and dtype in _NUMPY_DTYPES:  # numpy's ops on the same memory (see _BLOCK_FLOATS)
            numpy_norms = None if norms is None else numpy_view(norms.detach())
            out = unit_rows(view, _NUMPY_DTYPES[dtype], tolerance=tolerance, norms=numpy_norms)
            return x if out is view else torch.from_numpy(out)
    else:
        x = np.asarray(x)
        dtype = np.dtype(dtype or np.float32)
    if norms is None:
        norms = row_norms(x)
    if tolerance > 0 and (x.numel() if is_tensor else x.size):
        finite = bool(torch.isfinite(norms).all()) if is_tensor else bool(np.isfinite(norms).all())
        largest = float((norms - 1).abs().max()) if is_tensor else float(np.abs(norms - 1).max())
        if finite and largest <= tolerance:
            return x.to(dtype) if is_tensor else x.astype(dtype, copy=False)
    if is_tensor:
        flat, flat_norms = x.reshape(-1, x.shape[-1]), norms.reshape(-1, 1).clamp(min=_TINY)
        out = torch.empty(flat.shape, dtype=dtype, device=x.device)
        step = _block_rows(flat)
        for i in range(0, len(flat), step):
            out[i : i + step] = flat[i : i + step].to(torch.float64) / flat_norms[i : i + step]
        return out.reshape(x.shape)
    flat, flat_norms = x.reshape(-1, x.shape[-1]), np.maximum(norms.reshape(-1, 1), _TINY)
    out = np.empty(flat.shape, dtype=dtype)
    step = _block_rows(flat)
    for i in range(0, len(flat), step):
        out[i : i + step] = flat[i : i + step].astype(np.float64) / flat_norms[i : i + step]
    return out.reshape(x.shape)


@overload
def angle_deg(cos: float) -> float: ...
@overload
def angle_deg(cos: np.ndarray) -> np.ndarray: ...
def angle_deg(cos: float | np.ndarray | torch.Tensor) -> float | np.ndarray:
    """The angle in degrees whose cosine is ``cos``: a float for a number, a float64 array for an array (or
    tensor). Cosines a rounding step outside [-1, 1] are clipped to it; NaN gives NaN (not 180°, which clipping a
    NaN with Python's ``min``/``max`` would give)."""
    if isinstance(cos, torch.Tensor):
        cos = cos.detach().cpu().numpy()
    if isinstance(cos, np.ndarray):
        return np.degrees(np.arccos(np.clip(cos.astype(np.float64, copy=False), -1.0, 1.0)))
    value = float(cos)
    if math.isnan(value):
        return math.nan
    return math.degrees(math.acos(min(1.0, max(-1.0, value))))
