"""The embedding cache (simlearn/retrieval/cache.py): its fingerprint."""

from __future__ import annotations

import numpy as np

from simlearn.retrieval import fingerprint


def test_the_fingerprint_tells_arrays_of_other_dtypes_or_shapes_apart():
    x = np.arange(6, dtype=np.int64)
    assert fingerprint(x) == fingerprint(x.copy())
    assert fingerprint(x) != fingerprint(x.reshape(2, 3))  # the same bytes
    assert fingerprint(np.zeros(2, np.float64)) != fingerprint(np.zeros(4, np.float32))  # 16 zero bytes both
    assert fingerprint("a", "b") != fingerprint("ab")
