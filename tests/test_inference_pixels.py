"""The pixel embedder (:mod:`simlearn.inference.pixels`): an inference model whose embedding is the image's resized
pixels at unit length, with a stable digest of its own and one-line errors for bad options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from simlearn.errors import UserError
from simlearn.inference import InferenceModel
from simlearn.inference.pixels import PIXELS_CHANNELS, PIXELS_SIZE, check_pixel_options, pixel_model
from simlearn.retrieval.gallery import load_gallery


def test_the_embedding_is_the_resized_pixels_at_unit_length(tmp_path):
    rng = np.random.default_rng(0)
    pixels = (rng.random((20, 20)) * 255).astype(np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(pixels).save(path)
    model = pixel_model(size=20, channels=1)
    assert isinstance(model, InferenceModel) and model.embedding_dim == 400 and model.kind == "pixels"
    flat = pixels.astype(np.float64).ravel() / 255  # at its own size no resize: the file's pixels in [0, 1]
    np.testing.assert_allclose(model.embed(path), flat / np.linalg.norm(flat), atol=1e-6)
    # a brighter copy is a scaled vector: cosine 1 up to the clipped and rounded pixels
    brighter = np.clip(pixels.astype(np.float64) * 1.04, 0, 255).round().astype(np.uint8)
    assert float(model.embed(pixels) @ model.embed(brighter)) > 0.999
    assert float(model.embed(pixels) @ model.embed(rng.permutation(pixels.ravel()).reshape(20, 20))) < 0.9
    # another size goes through the model's preprocessing: resized to size × size, colour as 3 equal channels
    rgb = pixel_model(size=8, channels=3)
    embedded = rgb.embed(path)
    assert embedded.shape == (192,) and np.isclose(np.linalg.norm(embedded), 1)
    assert np.allclose(embedded[:64], embedded[64:128]) and np.allclose(embedded[:64], embedded[128:])


def test_the_digest_is_stable_and_names_the_settings():
    model = pixel_model()
    assert (model.preprocessing["image_size"], model.preprocessing["channels"]) == (PIXELS_SIZE, PIXELS_CHANNELS)
    assert len(model.digest) == 64 and model.digest == pixel_model().digest
    assert len({model.digest, pixel_model(size=16).digest, pixel_model(channels=1).digest}) == 3
    # a real model of the same preprocessing and dimension is another model
    encoder = model.encoder
    other = InferenceModel(encoder, model.preprocessing, OmegaConf.create({}), "x.ckpt", "checkpoint", "x.ckpt")
    assert other.digest != model.digest


def test_a_black_image_is_a_zero_row_not_nan():
    row = pixel_model(size=4, channels=1).embed_tensor(torch.zeros(1, 1, 4, 4))
    assert np.isfinite(row).all() and not row.any()


def test_a_folder_gallery_is_embedded_and_cached(tmp_path):
    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((10, 10), 40 * (i + 1), dtype=np.uint8)).save(folder / "a" / f"{i}.png")
    cfg = OmegaConf.create({"cache": True, "cache_dir": str(tmp_path / "cache"), "batch_size": 2})
    model = pixel_model(size=10, channels=1)
    gallery = load_gallery(folder, model, cfg)
    assert gallery.embeddings.shape == (3, 100) and gallery.labels == ["a"] * 3
    assert list((tmp_path / "cache").glob("gallery-*.npz"))  # cached, keyed as a checkpoint's gallery is
    np.testing.assert_array_equal(load_gallery(folder, model, cfg).embeddings, gallery.embeddings)


@pytest.mark.parametrize(
    ("size", "channels", "fragment"),
    [
        (0, 3, "pixels.size=0 must be a whole number"),
        ("big", 3, "pixels.size='big'"),
        (32, 2, r"pixels.channels=2 must be 1 \(grey\) or 3"),
    ],
)
def test_bad_options_are_one_line(size, channels, fragment):
    with pytest.raises(UserError, match=fragment) as error:
        check_pixel_options(size, channels)
    assert "\n" not in str(error.value)
