"""scikit-learn's 1,797 real 8×8 handwritten digits: ships with an installed package, so it needs no download."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sklearn.datasets import load_digits

from simlearn.data.base import EmbeddingDataModule
from simlearn.data.in_memory import ImageTensors

DIGIT_NAMES = [str(d) for d in range(10)]


def digit_fields(digits: torch.Tensor) -> dict[str, torch.Tensor]:
    """The label fields of a digit dataset: the digit, its parity (0 even, 1 odd) and its magnitude (its value)."""
    digits = digits.long()
    return {"digit": digits, "parity": digits % 2, "magnitude": digits.clone()}


def digit_images(images: torch.Tensor, digits: torch.Tensor, split: Sequence[str | None] | None = None) -> ImageTensors:
    """Digit images with their label fields and names (``magnitude`` is a number: named by its values)."""
    return ImageTensors(
        images=images, fields=digit_fields(digits), names={"digit": DIGIT_NAMES, "parity": ["even", "odd"]}, split=split
    )


class DigitsDataModule(EmbeddingDataModule):
    """The UCI/scikit-learn optical digits (8×8, 17 grey levels), split per class into train/val/test."""

    name = "digits"

    def load(self) -> ImageTensors:
        bunch = load_digits()
        # Pixel values are counts 0..16; scale to [0, 1] here so normalisation works as for uint8 images.
        images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        return digit_images(images, torch.tensor(bunch.target))
