"""The raw pixels as an embedding: an :class:`~simlearn.inference.InferenceModel` with no weights and no training.

Each image is prepared as any model's input is (decoded to ``channels``, the shorter side resized and centre-cropped
to ``size`` × ``size``, scaled to [0, 1]; mean 0 and std 1, so the pixels stay in [0, 1]), flattened and scaled to
unit length: the cosine of two images is that of their pixels. ``scripts/bench_organise.py`` measured it as the best
finder of copies that keep the pixels in place (exact, brightness, contrast, JPEG, resize) on MNIST and the digits;
it finds no crop or shift, and knows nothing of classes. ``simlearn-organise embedder=pixels`` uses it; since it is
an ``InferenceModel``, a folder gallery (:func:`simlearn.retrieval.load_gallery`), the copy check and the contact
sheets take it as they take a checkpoint's model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from simlearn.errors import UserError
from simlearn.inference.model import InferenceModel

__all__ = ["PIXELS_CHANNELS", "PIXELS_SIZE", "PixelEncoder", "PixelModel", "check_pixel_options", "pixel_model"]

#: the default side of the resized image: 32 × 32 keeps a digit or a product shot recognisable at 1,024 values a
#: channel (a 3,072-d embedding in colour, 12 KB of float32 an item)
PIXELS_SIZE = 32
#: the default channels: colour, since two photos that differ only in colour are two items; a grey image converted to
#: RGB repeats its one channel three times, which leaves every cosine as it was
PIXELS_CHANNELS = 3
#: names this embedding's definition in its digest: change it when the embedding changes (galleries record the digest)
PIXELS_VERSION = "simlearn.inference.pixels/1"


class PixelEncoder(nn.Module):
    """Prepared images (N, channels, size, size) → their pixels flattened and scaled to unit length (N, d); an
    all-zero (black) image stays a zero row, with cosine 0 to everything."""

    def __init__(self, size: int, channels: int) -> None:
        super().__init__()
        self.size, self.channels = int(size), int(channels)
        self.embedding_dim = self.size * self.size * self.channels

    def forward(self, images: Tensor) -> Tensor:
        flat = images.flatten(1).float()
        # in float64: a 3,072-d sum of squares in float32 would leave the norms of near-copies a rounding apart
        norms = flat.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (flat.double() / norms).float()


#: the largest ``pixels.size``: 256 x 256 x 3 is 196,608 float32 values (768 KiB) an image, a copy detector needs
#: far fewer (32 by default) and a larger side only makes every image's embedding (and the gallery) bigger
PIXELS_MAX_SIZE = 256


def pixel_gallery_bytes(items: int, size: int, channels: int, batch_size: int) -> int:
    """About the peak memory of organising the pixel embeddings of ``items`` images: 8 float32 copies of each (the
    embeddings, their unit rows, the search's and k-means' own copies, float64 re-scoring), plus 4 of a batch (the
    decoded images, float64 scaling). Measured: 5.4 MB more peak per image at 256 x 256 x 3 (6.9 float32 copies;
    560 and 1,120 images, 3.75 and 6.63 GiB); an estimate that is too low lets the OOM killer end the run unsaid."""
    per_image = size * size * channels * 4
    return 8 * items * per_image + 4 * batch_size * per_image


def check_pixel_options(size: object, channels: object) -> tuple[int, int]:
    """``pixels.size`` (a whole number ≥ 1) and ``pixels.channels`` (1 or 3), or one :class:`UserError` line."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= PIXELS_MAX_SIZE:
        raise UserError(
            f"pixels.size={size!r} must be a whole number from 1 to {PIXELS_MAX_SIZE} (the side the images are "
            f"resized to before their pixels are compared; {PIXELS_MAX_SIZE} is already "
            f"{PIXELS_MAX_SIZE**2 * 3:,} values an image); e.g. pixels.size={PIXELS_SIZE}."
        )
    if channels not in (1, 3) or isinstance(channels, bool):
        raise UserError(f"pixels.channels={channels!r} must be 1 (grey) or 3 (RGB); e.g. pixels.channels=3.")
    return int(size), int(channels)


class PixelModel(InferenceModel):
    """The pixel embedding as an inference model (see the module docstring). ``path`` is this module's file, the
    code that defines the embedding: a folder gallery's cache is keyed by it as by a checkpoint file, so a changed
    definition is embedded anew. ``digest`` is that of :data:`PIXELS_VERSION` and the preprocessing: stable across
    runs and machines, and never a trained model's."""

    def __init__(self, size: int = PIXELS_SIZE, channels: int = PIXELS_CHANNELS, device: str | torch.device = "cpu"):
        size, channels = check_pixel_options(size, channels)
        preprocessing = {"image_size": size, "channels": channels, "mean": [0.0] * channels, "std": [1.0] * channels}
        config = OmegaConf.create({"embedder": "pixels", "pixels": {"size": size, "channels": channels}})
        here = Path(__file__).resolve()
        super().__init__(PixelEncoder(size, channels), preprocessing, config, "pixels", "pixels", here, device)

    @property
    def digest(self) -> str:
        """sha256 of :data:`PIXELS_VERSION` and the preprocessing (there are no weights to hash)."""
        text = PIXELS_VERSION + json.dumps(self.preprocessing, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def __repr__(self) -> str:
        channels, size, _ = self.input_shape
        return f"PixelModel({self.embedding_dim}-d, input {channels}x{size}x{size}, {self.device})"


def pixel_model(
    size: int = PIXELS_SIZE, channels: int = PIXELS_CHANNELS, device: str | torch.device = "cpu"
) -> InferenceModel:
    """The pixel embedding of images resized to ``size`` × ``size`` in ``channels`` (1 grey, 3 RGB), as an inference
    model (:class:`PixelModel`): ``pixel_model().embed(["a.png", "b.png"])`` gives unit rows whose cosine is that
    of the two images' pixels."""
    return PixelModel(size, channels, device)
