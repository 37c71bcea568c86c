"""Hashing objectives: losses that train a hashing head's relaxed codes (``head=hash``) towards codes of a fixed
codebook. Any other loss trains codes too (the head adds its quantization term); these are the methods of the
hashing literature, as presets."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from simlearn.errors import UserError
from simlearn.losses.tasks import Task

__all__ = ["HashCenterTask", "hash_centres"]


def hash_centres(bits: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """CSQ's hash centres (Yuan et al., "Central Similarity Quantization for Efficient Image and Video Retrieval",
    CVPR 2020, sec. 3.2): the rows of a Hadamard matrix and their negatives when ``bits`` is a power of 2 and
    ``num_classes <= 2 bits`` (any two are ``bits / 2`` or ``bits`` apart in Hamming distance), else random ±1
    codes (each bit a fair coin, seeded), as the paper does. Returns (num_classes, bits) float32 ±1."""
    if bits & (bits - 1) == 0 and num_classes <= 2 * bits:
        from scipy.linalg import hadamard

        h = hadamard(bits).astype(np.float32)
        return np.concatenate([h, -h])[:num_classes]
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(num_classes, bits))


class HashCenterTask(Task):
    """CSQ's central similarity loss (Yuan et al., CVPR 2020): each item's relaxed code ``u`` (in (-1, 1), a
    hashing head's tanh) is pulled to its class's hash centre ``c`` (:func:`hash_centres`) by the binary cross
    entropy of ``(u + 1) / 2`` against ``(c + 1) / 2``, bit by bit. The quantization term is the head's
    (``head.quantization``). :meth:`predict`: the class of the nearest centre."""

    def __init__(self, field: str, bits: int, num_classes: int, weight: float = 1.0, seed: int = 0) -> None:
        super().__init__(field, weight)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise UserError(f"loss=csq needs num_classes as an integer ≥ 2, got {num_classes!r}.")
        self.register_buffer("centres", torch.from_numpy(hash_centres(int(bits), num_classes, seed)))

    def check_targets(self, targets: Tensor) -> None:
        if int(targets.max()) >= len(self.centres):
            raise UserError(
                f"loss=csq has {len(self.centres)} hash centres but the data has label {int(targets.max())}; set "
                f"its num_classes to at least {int(targets.max()) + 1}."
            )

    def forward(self, embeddings: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        if embeddings.shape[1] != self.centres.shape[1]:
            raise UserError(
                f"loss=csq's centres have {self.centres.shape[1]} bits but the embeddings {embeddings.shape[1]} "
                "values; use head=hash (its bits set the centres')."
            )
        target = (self.centres[batch[self.field]] + 1) / 2
        probability = ((embeddings + 1) / 2).clamp(1e-6, 1 - 1e-6)
        return F.binary_cross_entropy(probability, target)

    def predict(self, embeddings: Tensor) -> Tensor:
        return (embeddings @ self.centres.T).argmax(dim=1)
