"""Near-duplicate copies of images: the one set of edits simlearn makes a "copy" of an image with.

A copy is the image after a fixed, seeded chain of the edits that a re-upload, a screenshot or a re-scan makes: a
small crop and shift, a small rotation, a brightness and contrast change, a resize down and back up, and JPEG
re-encoding. The edits of item ``i`` are drawn from a generator seeded by ``(seed, i)`` alone, so an image gets the
same copy whatever batch it comes in, on any device and in any process (the label-free copy-detection metric,
:mod:`simlearn.evaluation.label_free`, and any code that plants near-duplicates in a gallery read the same copies).

The edits work on float images in [0, 1] (``C × H × W``, one or three channels) and return images of the same shape
in [0, 1]; :func:`near_duplicates` makes a batch, :func:`near_duplicate` one image.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

__all__ = ["CopyEdits", "jpeg_round_trip", "near_duplicate", "near_duplicates"]


@dataclass(frozen=True)
class CopyEdits:
    """The ranges the edits of a copy are drawn from (uniformly, per image). The defaults are "near": a copy a person
    would call the same picture. (On the 8 × 8 digits they still move pixels by 0.08 of the range on average, the
    resize and the crop most: with a crop of 10 % and a resize down to 75 %, a trained digits classifier found
    5 % of the copies first instead of 33 %.)"""

    #: the share of each side that the crop may cut (the crop is then resized back to the full size)
    max_crop: float = 0.05
    #: the most the image may move, as a share of its side
    max_shift: float = 0.04
    #: the largest rotation, in degrees (either way)
    max_rotation: float = 5.0
    #: brightness and contrast factors in [1 - this, 1 + this]
    max_photometric: float = 0.1
    #: the smallest side the image is resized down to (as a share of its side) before it is brought back up
    min_resize: float = 0.9
    #: the JPEG quality range of the re-encoding
    jpeg_quality: tuple[int, int] = (75, 95)

    def edit(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One copy of ``image`` (C × H × W in [0, 1]), every random draw taken from ``generator``."""

        def uniform(low: float, high: float) -> float:
            return float(low + (high - low) * torch.rand((), generator=generator))

        channels, height, width = image.shape
        image = image.float().clamp(0, 1)
        # crop: cut up to max_crop of each side, at a random place, then back to the full size
        keep_h = max(1, round(height * (1 - uniform(0, self.max_crop))))
        keep_w = max(1, round(width * (1 - uniform(0, self.max_crop))))
        top = int(torch.randint(0, height - keep_h + 1, (), generator=generator))
        left = int(torch.randint(0, width - keep_w + 1, (), generator=generator))
        image = F.resized_crop(image, top, left, keep_h, keep_w, [height, width], antialias=True)
        # shift and rotation in one affine map (the uncovered border is black, as a screenshot's margin)
        shift = [round(uniform(-self.max_shift, self.max_shift) * width),
                 round(uniform(-self.max_shift, self.max_shift) * height)]  # fmt: skip
        image = F.affine(image, angle=uniform(-self.max_rotation, self.max_rotation), translate=shift, scale=1.0,
                         shear=[0.0, 0.0], interpolation=F.InterpolationMode.BILINEAR)  # fmt: skip
        image = F.adjust_brightness(image, uniform(1 - self.max_photometric, 1 + self.max_photometric))
        image = F.adjust_contrast(image, uniform(1 - self.max_photometric, 1 + self.max_photometric))
        # resize down and back up: the detail a smaller re-upload loses
        factor = uniform(self.min_resize, 1.0)
        small = [max(1, round(height * factor)), max(1, round(width * factor))]
        image = F.resize(F.resize(image, small, antialias=True), [height, width], antialias=True)
        quality = int(torch.randint(self.jpeg_quality[0], self.jpeg_quality[1] + 1, (), generator=generator))
        return jpeg_round_trip(image, quality)


def jpeg_round_trip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """``image`` (C × H × W in [0, 1]) saved as a JPEG of ``quality`` and decoded again (by Pillow, as every image
    simlearn reads is decoded)."""
    channels = image.shape[0]
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode="L" if channels == 1 else "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255
    return torch.from_numpy(decoded.reshape(*decoded.shape[:2], channels).copy()).permute(2, 0, 1)


def _generator(seed: int, item: int) -> torch.Generator:
    # one generator per item, seeded by the pair: the copy does not depend on the batch or on other items
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(item)) % 2**63)


def near_duplicate(image: torch.Tensor, item: int, seed: int = 0, edits: CopyEdits | None = None) -> torch.Tensor:
    """The copy of ``image`` (C × H × W in [0, 1]) that item number ``item`` gets under ``seed``."""
    return (edits or CopyEdits()).edit(image.detach().cpu(), _generator(seed, item))


def near_duplicates(
    images: torch.Tensor, items: Sequence[int] | torch.Tensor, seed: int = 0, edits: CopyEdits | None = None
) -> torch.Tensor:
    """The copies of a batch ``images`` (B × C × H × W in [0, 1]), image ``b`` edited as item ``items[b]``; on the
    device and in the dtype of ``images`` (the edits run on the CPU: the JPEG round trip is Pillow's)."""
    edits = edits or CopyEdits()
    numbers = [int(i) for i in (items.tolist() if isinstance(items, torch.Tensor) else items)]
    if len(numbers) != len(images):
        raise ValueError(f"{len(images)} images but {len(numbers)} item numbers")
    host = images.detach().cpu()
    copies = [edits.edit(image, _generator(seed, item)) for image, item in zip(host, numbers, strict=True)]
    out = torch.stack(copies) if copies else host.float().clone()
    return out.to(device=images.device, dtype=images.dtype)
