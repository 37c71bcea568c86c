"""Image files as model input: finding them, decoding them with a checkpoint's preprocessing, embedding them."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from simlearn.data.image_files import IMAGE_EXTENSIONS, image_mode, image_transform, resize_side

log = logging.getLogger(__name__)

__all__ = [
    "EmbeddedFiles",
    "ImageLoader",
    "decode_image",
    "embed_files",
    "find_images",
    "folder_label",
    "release_memory",
    "thumbnail",
]

#: Errors PIL raises for a file that is not a (complete) image.
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)
#: An image decoded at more pixels than this is followed by :func:`release_memory`: its buffers are tens of MB.
LARGE_DECODE_PIXELS = 4_000_000


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(folder: Path) -> list[Path]:
    """The image files (by extension) under ``folder``, recursively, sorted; hidden files and folders left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if is_image_name(p) and p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def folder_label(path: Path, root: Path) -> str | None:
    """The class of an image under ``root``: its top-level sub-folder (``root/<class>/…/image``), as for
    ``data=image_folder``; None for a file directly in ``root``."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


class ImageLoader:
    """Image file → model input, as a checkpoint's ``preprocessing`` says: decode as grey (1 channel) or RGB (3),
    resize the shorter side and centre-crop ``image_size`` (with its ``crop_pct`` and ``interpolation`` when it
    records them: a timm model's evaluation transform), scale to [0, 1], normalise with ``mean``/``std``."""

    def __init__(self, preprocessing: Mapping[str, Any]) -> None:
        self.image_size = int(preprocessing["image_size"])
        self.channels = int(preprocessing["channels"])
        #: the shorter side the transform resizes to (larger than image_size under a crop_pct): what a large image is
        #: decoded down to, so that the transform never scales a decoded image back up
        self.resize_side = resize_side(self.image_size, preprocessing.get("crop_pct"))
        self.interpolation = preprocessing.get("interpolation") or "bilinear"
        self.transform = image_transform(
            self.image_size,
            self.channels,
            list(preprocessing["mean"]),
            list(preprocessing["std"]),
            crop_pct=preprocessing.get("crop_pct"),
            interpolation=preprocessing.get("interpolation"),
        )

    def __call__(self, path: str | Path | IO[bytes]) -> torch.Tensor:
        """The model input for one file; raises a decoding error (see ``DECODE_ERRORS``) when it is no image."""
        try:
            image, decoded = decode_image(path, self.channels, self.resize_side, self.interpolation)
        except DECODE_ERRORS:  # a large image cut short leaves its buffers as a whole one does
            release_memory()
            raise
        tensor = self.transform(image)
        del image
        if decoded > LARGE_DECODE_PIXELS:
            release_memory()
        return tensor


#: torchvision's interpolation names (what checkpoints record) as Pillow's filters
_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def decode_image(
    source: str | Path | IO[bytes], channels: int, image_size: int, interpolation: str = "bilinear"
) -> tuple[Image.Image, int]:
    """Decode an image as RGB (``channels=3``) or grey (1), already resized to the model's input size when it is
    larger (its shorter side to ``image_size``, as the transform's resize would: pass the transform's resize side,
    :func:`~simlearn.data.image_files.resize_side`, under a ``crop_pct``), and the number of pixels decoded.

    A large image is never turned into a float tensor at full size (4 bytes × channels per pixel, resized from there:
    a gigabyte for a 7000 × 7000 upload): JPEGs are decoded at 1/2 … 1/8 scale where that leaves twice the size
    (PIL's draft mode), and every format is resized in uint8 by Pillow's antialiased filter (``interpolation``, the
    transform's: bilinear, or e.g. a timm model's bicubic), whose passes
    need memory of the order of the output only. The result is the old float path's to within uint8 rounding (0.006
    after normalisation here); images smaller than the model's size are left to the transform, as before."""
    mode = image_mode(channels)
    with Image.open(source) as image:
        image.draft(mode, (2 * image_size, 2 * image_size))  # JPEG only: a no-op for other formats
        image.load()
        decoded = image.width * image.height
        # palette, 1-bit, CMYK, 16-bit …: converted first (Pillow resizes "P" and "1" nearest-neighbour only)
        converted = image if image.mode == mode else image.convert(mode)
        width, height = converted.size
        short, long = min(width, height), max(width, height)
        if short <= image_size:  # the file's own image is closed on leaving: a copy of it
            return (converted.copy() if converted is image else converted), decoded
        # torchvision's Resize(image_size): the shorter side to image_size, the longer one scaled and truncated
        other = int(image_size * long / short)
        size = (image_size, other) if width <= height else (other, image_size)
        return converted.resize(size, _RESAMPLING.get(interpolation, Image.Resampling.BILINEAR)), decoded


def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call, the allocator decides
        return None


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Hand the C heap's free memory back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    The buffers of a large decoded image are freed to glibc's arenas (one per thread), which keep them: without
    this, 16 concurrent uploads of a 7000 × 7000 PNG left the service 1.5 GB larger (and peaked 1.6 GB above its
    idle size rather than 0.44 GB), measured with tests/test_serve_api.py's digits model."""
    if _TRIM is not None:
        _TRIM(0)


@dataclass
class EmbeddedFiles:
    """Embeddings (N, d) of the files that could be read, in order, and the files that could not."""

    paths: list[Path]
    embeddings: np.ndarray
    failed: list[tuple[Path, str]]


@torch.no_grad()
def embed_files(
    encoder: nn.Module,
    paths: Sequence[Path],
    loader: ImageLoader,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> EmbeddedFiles:
    """Embed image files in batches; files that cannot be decoded are skipped and listed in ``failed``."""
    encoder.eval()
    kept: list[Path] = []
    failed: list[tuple[Path, str]] = []
    parts: list[np.ndarray] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        if batch:
            parts.append(encoder(torch.stack(batch).to(device)).float().cpu().numpy())
            batch.clear()

    for path in paths:
        try:
            batch.append(loader(path))
        except DECODE_ERRORS as error:
            failed.append((Path(path), f"{type(error).__name__}: {error}"))
            continue
        kept.append(Path(path))
        if len(batch) == batch_size:
            flush()
    flush()
    dim = int(getattr(encoder, "embedding_dim", 0))
    embeddings = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
    return EmbeddedFiles(paths=kept, embeddings=embeddings, failed=failed)


def thumbnail(path: str | Path, channels: int = 3, size: int = 160) -> np.ndarray | None:
    """A small copy of an image file for figures (H, W) grey or (H, W, 3) RGB in [0, 255], None if unreadable."""
    try:
        with Image.open(path) as image:
            image.draft("RGB" if channels == 3 else "L", (size, size))
            image = image.convert("RGB" if channels == 3 else "L")
            image.thumbnail((size, size))
            return np.asarray(image)
    except DECODE_ERRORS:
        return None
