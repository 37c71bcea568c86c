"""Scoring known pairs: ROC-AUC of the cosine similarity, and the accuracy of the best cosine threshold."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from simlearn.errors import UserError
from simlearn.retrieval.vectors import unit_rows

__all__ = ["PairEvaluator", "best_threshold", "pair_cosines", "pair_metrics"]


def pair_cosines(embeddings: Tensor, pair: Tensor, similar: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The cosine of each pair's two embeddings and its label, pairs sorted by id (each id must occur twice)."""
    order = torch.sort(pair, stable=True).indices
    first, second = order[0::2], order[1::2]
    if len(first) != len(second) or not torch.equal(pair[first], pair[second]):
        raise UserError("pair evaluation needs both images of every pair: each pair id must occur exactly twice.")
    unit = unit_rows(embeddings)  # float32 unit rows
    cos = (unit[first] * unit[second]).sum(dim=1)
    return cos.cpu().double().numpy(), similar[first].cpu().numpy().astype(np.int64)


def best_threshold(cos: np.ndarray, similar: np.ndarray) -> tuple[float, float]:
    """The threshold t maximising the accuracy of "similar ⇔ cos ≥ t", and that accuracy.

    Candidates are every distinct cosine and +inf (everything dissimilar); among equally accurate ones the midpoint
    between the chosen cosine and the next lower one is returned, a margin on both sides.
    """
    order = np.argsort(-cos, kind="stable")
    cos_sorted, similar_sorted = cos[order], similar[order]
    n, positives = len(cos), int(similar.sum())
    # predicting the top k as similar: correct = similar among them + dissimilar among the rest
    true_pos = np.concatenate([[0], np.cumsum(similar_sorted)])
    k = np.arange(n + 1)
    correct = true_pos + (n - positives) - (k - true_pos)
    # a threshold can only split between distinct values: k valid if k == 0, k == n or cos[k-1] > cos[k]
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = cos_sorted[:-1] > cos_sorted[1:]
    best = int(np.argmax(np.where(valid, correct, -1)))
    if best == 0:
        threshold = math.inf if n == 0 else float(cos_sorted[0]) + 1e-6
    elif best == n:
        threshold = float(cos_sorted[-1])
    else:
        threshold = float(cos_sorted[best - 1] + cos_sorted[best]) / 2
    return threshold, float(correct[best]) / n


def pair_metrics(cos: np.ndarray, similar: np.ndarray) -> dict[str, float]:
    """``roc_auc`` (NaN with only one kind of pair), ``accuracy`` and ``threshold`` (best cosine threshold, on these
    pairs), ``num_pairs``, ``num_similar``, and the mean cosine of similar / dissimilar pairs."""
    threshold, accuracy = best_threshold(cos, similar)
    both = 0 < similar.sum() < len(similar)
    return {
        "roc_auc": float(roc_auc_score(similar, cos)) if both else math.nan,
        "accuracy": accuracy,
        "threshold": threshold,
        "mean_cos_similar": float(cos[similar == 1].mean()) if similar.any() else math.nan,
        "mean_cos_dissimilar": float(cos[similar == 0].mean()) if (similar == 0).any() else math.nan,
        "num_pairs": float(len(cos)),
        "num_similar": float(similar.sum()),
    }


class PairEvaluator:
    """Metrics of a split of known pairs (see :func:`pair_metrics`); plug in with
    ``evaluation._target_=simlearn.evaluation.PairEvaluator`` and monitor ``val/roc_auc``.

    The threshold is the best one for the split it is computed on, so ``accuracy`` is that split's best achievable
    accuracy; to judge a threshold fairly, take ``val/threshold`` and apply it to the test pairs' cosines.
    """

    main_metric = "roc_auc"

    def __init__(
        self,
        pair_field: str = "pair",
        label_field: str = "similar",
    ) -> None:
        self.pair_field = pair_field
        self.label_field = label_field

    def __call__(self, embeddings: Tensor, fields: Mapping[str, Tensor], split: str = "test") -> dict[str, float]:
        missing = [f for f in (self.pair_field, self.label_field) if f not in fields]
        if missing:
            raise UserError(
                f"PairEvaluator needs the fields {missing}, which the data does not have (it has {sorted(fields)}); "
                f"use it with pair data (data=pairs_csv)."
            )
        return pair_metrics(*pair_cosines(embeddings, fields[self.pair_field], fields[self.label_field]))
