"""Image files (simlearn/data/image_files.py): the one ImageDecoder."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .serving import (
    png_bytes,
)


def test_large_images_are_resized_while_decoded(queries_dir):
    """A large image is resized to the model's size in uint8 as it is decoded (never a float tensor at full size):
    the model input is the one of the full-size float path (decode, to float, torchvision's antialiased resize) to
    within uint8 rounding, for any scale, aspect and mode (grey, RGB, palette)."""
    from simlearn.data.image_files import ImageDecoder
    from simlearn.data.images import ImageLoader

    image, decoded = ImageDecoder(1, 16).decode(io.BytesIO(png_bytes(Image.new("RGB", (3000, 2000), (90, 20, 200)))))
    assert decoded == 3000 * 2000 and image.mode == "L" and image.size == (24, 16)
    for channels in (1, 3):
        loader = ImageLoader({"image_size": 8, "channels": channels, "mean": [0.5] * channels, "std": [0.5] * channels})
        for n, path in enumerate(sorted(queries_dir.rglob("*.png"))[:3]):
            digit = Image.open(path).convert("L")
            for size, mode in (((800, 1040), "L"), ((1000, 333), "RGB"), ((17, 25), "P")):
                large = digit.resize(size, Image.Resampling.BICUBIC).convert(mode)
                data = png_bytes(large)
                full_size = loader.transform(ImageDecoder(channels)(io.BytesIO(data)))
                np.testing.assert_allclose(loader(io.BytesIO(data)), full_size, atol=0.02, err_msg=f"{n} {size}")
    # under a backbone's evaluation crop (timm: crop_pct, bicubic) a large image is decoded down to the transform's
    # resize side (floor(size / crop_pct)), never to the crop size and scaled back up
    crop = {"image_size": 16, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.5}
    loader = ImageLoader({**crop, "interpolation": "bicubic"})
    assert loader.decoder.resize == 32 and loader.decoder.interpolation == "bicubic"
    rng = np.random.default_rng(0)
    large = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).resize((1200, 800), Image.BICUBIC)
    data = png_bytes(large)
    full_size = loader.transform(ImageDecoder(3)(io.BytesIO(data)))
    np.testing.assert_allclose(loader(io.BytesIO(data)), full_size, atol=0.05)
