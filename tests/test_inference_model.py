"""The one inference model (simlearn.inference.InferenceModel, what simlearn.load gives): a checkpoint and the model
folder exported from it embed a file, a prepared array and a PIL image to the same unit-length float32 vectors, and
a bad input is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import simlearn
from simlearn.checkpoints import restore
from simlearn.config import compose_config
from simlearn.errors import UserError
from simlearn.export import export
from simlearn.inference import load_model
from simlearn.inference.model_folder import WEIGHTS

from .helpers import save_digit


@pytest.fixture(scope="module")
def both(trained_run, tmp_path_factory):
    """The trained digits checkpoint, its exported model folder and three digit PNGs."""
    root = tmp_path_factory.mktemp("inference")
    ckpt = next((trained_run / "checkpoints").glob("best-epoch*.ckpt"))
    folder = export(compose_config([f"ckpt_path={ckpt}", "format=hf", f"out={root / 'model'}"], "export", root / "run"))
    digits = load_digits()
    pngs = []
    for index in (0, 7, 500):
        pngs.append(root / f"{index}.png")
        Image.fromarray((digits.images[index] / 16 * 255).round().astype(np.uint8)).save(pngs[-1])
    return {"ckpt": ckpt, "folder": folder, "pngs": pngs}


def test_a_checkpoint_and_its_model_folder_embed_files_arrays_and_images_alike(both):
    from_ckpt, from_folder = simlearn.load(both["ckpt"]), simlearn.load(both["folder"])
    assert (from_ckpt.kind, from_ckpt.source, from_ckpt.path) == ("checkpoint", both["ckpt"], both["ckpt"])
    assert (from_folder.kind, from_folder.source) == ("folder", both["folder"])
    assert from_folder.path == both["folder"] / WEIGHTS  # the file galleries embedded with it record
    assert from_ckpt.preprocessing == from_folder.preprocessing and from_ckpt.input_shape == (1, 8, 8)
    assert from_ckpt.config.backbone == from_folder.config.backbone and "loss" in from_ckpt.config  # what built them
    assert not from_ckpt.encoder.training and not from_folder.encoder.training
    pngs = both["pngs"]
    prepared = torch.stack([from_ckpt.loader(p) for p in pngs])  # model input, as the training data's transform
    with torch.no_grad():
        by_hand = from_ckpt.encoder(prepared).numpy()
    by_hand /= np.linalg.norm(by_hand, axis=1, keepdims=True)
    pil = [Image.open(p) for p in pngs]
    for model in (from_ckpt, from_folder):
        embedded = {
            "file": model.embed(pngs),
            "file names": model.embed([str(p) for p in pngs]),
            "files, skipping none": model.embed_files(pngs).embeddings,
            "array": model.embed(prepared.numpy()),
            "tensor": model.embed_tensor(prepared),
            "PIL image": model.embed(pil),
            "pixels": model.embed([np.asarray(image) for image in pil]),
        }
        for what, vectors in embedded.items():
            assert vectors.dtype == np.float32 and vectors.shape == (3, 64), what
            np.testing.assert_allclose(vectors, by_hand, rtol=0, atol=1e-6, err_msg=what)
        single = model.embed(pil[1])
        assert single.shape == (64,)
        np.testing.assert_allclose(single, by_hand[1], rtol=0, atol=1e-6)


def test_a_bad_input_is_one_line(both, tmp_path):
    model = simlearn.load(both["folder"])
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    cases = [
        (not_an_image, r"notes.png' is not an image that can be read \(UnidentifiedImageError"),
        (np.zeros((2, 3, 32, 32), np.float32), r"float of shape \(1, 8, 8\) .*got torch.float32 \(2, 3, 32, 32\)"),
        (np.zeros((3, 32, 32), np.float32), r"float of shape \(1, 8, 8\) .*got torch.float32 \(3, 32, 32\)"),
        (np.zeros((8, 8, 5), np.uint8), r"uint8 pixel array must be \(H, W\) grey, .*got shape \(8, 8, 5\)"),
        ({"image": 1}, r"cannot embed a dict"),
    ]
    for bad, message in cases:
        with pytest.raises(UserError, match=message) as error:
            model.embed(bad)
        assert "\n" not in str(error.value), bad
    with pytest.raises(UserError, match=r"batch \(N, 1, 8, 8\)") as error:
        model.embed_tensor(torch.zeros(2, 8, 8))
    assert "\n" not in str(error.value)
    # a gallery or query folder is still embedded around a broken file: it is named, not raised
    embedded = model.embed_files([not_an_image, *both["pngs"]])
    assert embedded.paths == both["pngs"] and [path for path, _ in embedded.failed] == [not_an_image]


def test_image_files_are_preprocessed_like_the_training_data(checkpoint_folders, tmp_path):
    """A PNG of a test image embeds to (almost) the embedding of the same image inside the dataset."""
    cfg = compose_config([f"ckpt_path={checkpoint_folders['ckpt']}"], config_name="eval", output_dir=tmp_path)
    restored = restore(cfg)
    test = restored.datamodule.datasets["test"]
    rows = test.indices[:20].tolist()
    digits = load_digits()
    files = []
    for row in rows:
        files.append(tmp_path / f"{row}.png")
        save_digit(files[-1], digits.images[row])
    loaded = load_model(checkpoint_folders["ckpt"])
    from_files = loaded.embed_files(files).embeddings
    with torch.no_grad():
        from_data = restored.model.encoder.eval()(test.__getitems__(list(range(20)))["image"]).numpy()
    cos = (from_files * from_data).sum(axis=1)
    assert cos.min() > 0.999
