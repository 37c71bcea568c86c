"""Image files as model input: finding them and decoding them with a checkpoint's preprocessing (embedding them is
:meth:`simlearn.inference.InferenceModel.embed_files`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from simlearn.data.image_files import (
    DECODE_ERRORS,
    IMAGE_EXTENSIONS,
    ImageDecoder,
    evaluation_decoder,
    image_transform,
)

log = logging.getLogger(__name__)

__all__ = [
    "ImageLoader",
    "DECODE_ERRORS",
    "ImageDecoder",
    "find_images",
    "folder_label",
    "release_memory",
    "thumbnail",
]

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
        self.transform = image_transform(
            self.image_size,
            self.channels,
            list(preprocessing["mean"]),
            list(preprocessing["std"]),
            crop_pct=preprocessing.get("crop_pct"),
            interpolation=preprocessing.get("interpolation"),
        )
        #: the decoder of a dataset's evaluation splits: a file gets the same model input here as in the data
        self.decoder = evaluation_decoder(preprocessing)

    def __call__(self, path: str | Path | IO[bytes], formats: Sequence[str] | None = None) -> torch.Tensor:
        """The model input for one file; raises a decoding error (see ``DECODE_ERRORS``) when it is no image.
        ``formats``: the PIL formats to accept (a service's allow-list), every format by default."""
        try:
            image, decoded = self.decoder.decode(path, formats)
        except DECODE_ERRORS:  # a large image cut short leaves its buffers as a whole one does
            release_memory()
            raise
        tensor = self.transform(image)
        del image
        if decoded > LARGE_DECODE_PIXELS:
            release_memory()
        return tensor


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
    idle size rather than 0.44 GB), measured with the serve tests' digits model (tests/conftest.py)."""
    if _TRIM is not None:
        _TRIM(0)


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
