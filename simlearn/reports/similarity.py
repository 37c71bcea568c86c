"""Class-to-class similarity report: mean cosine similarity (and angle) between every pair of classes."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simlearn.errors import UserError
from simlearn.retrieval.vectors import angle_deg, as_numpy, unit_rows

__all__ = ["ClassSimilarity", "class_similarity"]

_MAX_ANNOTATED_CLASSES = 20


def _json_matrix(m: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else round(float(v), 6) for v in row] for row in m]


@dataclass
class ClassSimilarity:
    """Mean cosine similarity (and angle) between the embeddings of every pair of classes.

    ``cos[a, b]`` (a != b) is the mean of cos(e_i, e_j) over all pairs i in class a, j in class b.
    ``cos[a, a]`` is the mean over pairs of distinct items i != j of class a; it is NaN for a class with a
    single item (no such pair), and written as ``null`` in JSON.
    """

    class_names: list[str]
    cos: np.ndarray  # (C, C) mean pairwise cosine similarity
    counts: np.ndarray  # (C,) items per class

    @property
    def angle_deg(self) -> np.ndarray:
        """(C, C) angle in degrees matching ``cos`` (NaN where ``cos`` is NaN)."""
        return angle_deg(self.cos)

    def to_dict(self) -> dict:
        """JSON-ready dict: classes, counts, cos and angle_deg (floats rounded to 6 places, NaN as None)."""
        return {
            "classes": list(self.class_names),
            "counts": [int(c) for c in self.counts],
            "cos": _json_matrix(self.cos),
            "angle_deg": _json_matrix(self.angle_deg),
        }

    def save_json(self, path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def save_heatmap(self, path, title: str | None = None, annotate: bool = True) -> None:
        """Write a PNG (or any format matplotlib infers from ``path``) heatmap of ``cos`` on a [-1, 1] scale.

        Cells are annotated with the cosine and the angle (e.g. "0.93\\n21°") when ``annotate`` and there
        are at most 20 classes.
        """
        n = len(self.class_names)
        side = min(4.0 + 0.6 * n, 30.0)
        fig = Figure(figsize=(side + 1.5, side), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        im = ax.imshow(np.ma.masked_invalid(self.cos), cmap="coolwarm", vmin=-1.0, vmax=1.0)
        fig.colorbar(im, ax=ax, label="mean cosine similarity", shrink=0.8)
        ticks = np.arange(n)
        ax.set_xticks(ticks, self.class_names)
        if n > 4:
            ax.tick_params(axis="x", labelrotation=45)
            for label in ax.get_xticklabels():
                label.set(ha="right", rotation_mode="anchor")
        ax.set_yticks(ticks, self.class_names)
        ax.set_xlabel("class")
        ax.set_ylabel("class")
        ax.set_title(title if title is not None else "Class-to-class mean cosine similarity")
        if annotate and n <= _MAX_ANNOTATED_CLASSES:
            fontsize = 9 if n <= 10 else 7
            angles = self.angle_deg
            for a in range(n):
                for b in range(n):
                    c = self.cos[a, b]
                    text = "n/a" if math.isnan(c) else f"{c:.2f}\n{angles[a, b]:.0f}°"
                    color = "white" if not math.isnan(c) and abs(c) > 0.6 else "black"
                    ax.text(b, a, text, ha="center", va="center", fontsize=fontsize, color=color)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        fig.clear()


def class_similarity(embeddings, labels, class_names: Sequence[str] | None = None) -> ClassSimilarity:
    """Mean cosine similarity between the L2-normalised embeddings of every pair of classes (exact, O(N*d)).

    With mu_A the mean normalised embedding of class A (n_A items), the off-diagonal entry is
    cos[A, B] = mu_A . mu_B (the mean over all cross pairs), and the diagonal is the mean over the pairs
    i != j of A: cos[A, A] = (n_A**2 * |mu_A|**2 - n_A) / (n_A * (n_A - 1)), NaN when n_A == 1.

    Classes are the sorted unique labels. ``class_names``, if given, is indexed by label value
    (``class_names[label]``), so it needs more than max(labels) entries; by default a class is named
    str(label).
    """
    emb = as_numpy(embeddings)
    lab = as_numpy(labels)
    if emb.ndim != 2:
        raise UserError(f"embeddings must be a 2-D array of shape (num_items, dim), got shape {emb.shape}.")
    if emb.shape[0] == 0 or emb.shape[1] == 0:
        raise UserError(f"embeddings is empty (shape {emb.shape}); pass at least one item with dim >= 1.")
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
        raise UserError(
            f"labels must be a 1-D array of integer class ids, got shape {lab.shape} and dtype {lab.dtype}."
        )
    if len(lab) != len(emb):
        raise UserError(
            f"labels has {len(lab)} entries but embeddings has {len(emb)} rows; give one label per embedding."
        )
    emb = emb.astype(np.float64)
    if not np.isfinite(emb).all():
        raise UserError("embeddings contain NaN or inf; all values must be finite.")

    classes, inverse, counts = np.unique(lab, return_inverse=True, return_counts=True)
    if class_names is None:
        names = [str(c) for c in classes]
    else:
        if isinstance(class_names, str):
            raise UserError("class_names must be a sequence of names (one per label value), not a single string.")
        if classes[0] < 0 or classes[-1] >= len(class_names):
            raise UserError(
                f"class_names has {len(class_names)} entries but labels range over "
                f"[{classes[0]}, {classes[-1]}]; "
                f"class_names is indexed by label value, so it needs at least {int(classes[-1]) + 1} entries "
                "and labels must be >= 0."
            )
        names = [str(class_names[int(c)]) for c in classes]

    unit = unit_rows(emb, np.float64)
    sums = np.zeros((len(classes), emb.shape[1]))
    np.add.at(sums, inverse, unit)
    mu = sums / counts[:, None]
    cos = mu @ mu.T
    n = counts.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        diag = ((sums * sums).sum(axis=1) - n) / (n * (n - 1))
    diag[counts == 1] = np.nan
    np.fill_diagonal(cos, diag)
    return ClassSimilarity(class_names=names, cos=cos, counts=counts)
