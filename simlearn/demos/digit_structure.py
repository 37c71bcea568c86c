"""Digit similarity structure: how close, on average, are two digits' embeddings by how the digits relate?

Pairs of items are grouped by their digits a, b:

* ``same_digit``: a == b (distinct items i != j);
* ``same_parity_near``: same parity and |a - b| == 2 (2 and 4, 3 and 5, …);
* ``same_parity_far``: same parity and |a - b| >= 4;
* ``different_parity``: a and b of different parity.

Each group reports the mean cosine similarity over its unordered pairs, the angle (degrees) of that mean cosine,
and the number of pairs. A network trained on digit, parity and magnitude should order them
``same_digit > same_parity_near > same_parity_far > different_parity``; ``parity_gap`` is
``same_parity_near - different_parity``.

The means are exact but need no N×N matrix: the mean cosine between two digit groups is the dot product of their
mean normalised embeddings (:func:`simlearn.reports.similarity.class_similarity`), so a group's mean is the
class-to-class matrix averaged with each cell weighted by its number of pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from simlearn.reports.similarity import class_similarity
from simlearn.retrieval.vectors import angle_deg, as_numpy

__all__ = ["PAIR_GROUPS", "digit_structure", "pair_group", "write_structure"]

PAIR_GROUPS = ("same_digit", "same_parity_near", "same_parity_far", "different_parity")


def pair_group(a: int, b: int) -> str:
    """The group of a pair of items with digits ``a`` and ``b``."""
    if a == b:
        return "same_digit"
    if (a - b) % 2:
        return "different_parity"
    return "same_parity_near" if abs(a - b) == 2 else "same_parity_far"


def _summary(cos: float | None, pairs: int) -> dict:
    if cos is None or pairs == 0:
        return {"cos": None, "angle_deg": None, "pairs": 0}
    return {"cos": round(cos, 6), "angle_deg": round(angle_deg(cos), 4), "pairs": pairs}


def digit_structure(embeddings, digits) -> dict:
    """Mean cosine similarity, angle and pair count per pair group (see the module doc), plus ``parity_gap``
    (same_parity_near − different_parity) and ``ordered`` (same_digit > same_parity_near > different_parity).

    ``digits`` holds each item's digit value (an integer label; parity is its value mod 2). A group without
    pairs has ``cos`` and ``angle_deg`` None, and so do ``parity_gap`` and ``ordered`` when they need it.
    """
    digits = as_numpy(digits)
    similarity = class_similarity(embeddings, digits)
    values = np.unique(digits).tolist()  # the rows of similarity.cos, in order
    n = similarity.counts.astype(np.int64)
    sums = dict.fromkeys(PAIR_GROUPS, 0.0)
    pairs = dict.fromkeys(PAIR_GROUPS, 0)
    for i, a in enumerate(values):
        for j in range(i, len(values)):
            # unordered pairs: n_a (n_a - 1) / 2 within a digit, n_a n_b between two digits
            count = int(n[i] * (n[i] - 1) // 2) if i == j else int(n[i] * n[j])
            if count == 0:
                continue
            group = pair_group(int(a), int(values[j]))
            sums[group] += count * float(similarity.cos[i, j])
            pairs[group] += count
    groups = {g: _summary(sums[g] / pairs[g] if pairs[g] else None, pairs[g]) for g in PAIR_GROUPS}
    same, near, different = (groups[g]["cos"] for g in ("same_digit", "same_parity_near", "different_parity"))
    return {
        **groups,
        "parity_gap": None if None in (near, different) else round(near - different, 6),
        "ordered": None if None in (same, near, different) else bool(same > near > different),
        "num_items": int(len(digits)),
    }


def write_structure(path: str | Path, embeddings, digits) -> dict:
    """Compute :func:`digit_structure` and write it as JSON to ``path`` (e.g. ``<run>/structure.json``)."""
    structure = digit_structure(embeddings, digits)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(structure, indent=2, allow_nan=False) + "\n")
    return structure


class StructureReport:
    """``structure.json`` after testing, for digit data (a test split with the label field ``field``): how the
    embedding arranges same digit, same parity near/far and different parity (the MNIST experiment's figures).
    Configured as ``reports.structure``; on data without that field it writes nothing."""

    def __init__(self, field: str = "digit", file_name: str = "structure.json") -> None:
        self.field = field
        self.file_name = file_name

    def __call__(self, trainer: Any, model: Any, datamodule: Any, output_dir: str | Path) -> dict[str, float]:
        result = model.results["test"]
        if self.field not in result.fields:
            return {}
        write_structure(Path(output_dir) / self.file_name, result.embeddings, result.fields[self.field])
        return {}
