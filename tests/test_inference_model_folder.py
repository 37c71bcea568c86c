"""The shareable model folder (simlearn/inference/model_folder.py; simlearn-export format=hf, simlearn.load): export
→ load gives the checkpoint's embeddings for paths, PIL images, arrays and tensors; the files are what they say; bad
weights are one line; search, embed and serve take a folder as they take its checkpoint. (The card, the push and the
overwrite refusal: tests/test_export_card.py, test_export_hub.py, test_export_command.py. A UserError is one line and
exit code 2 on the command line: tests/test_usage.py.)"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.datasets import load_digits

import simlearn
from simlearn.config import compose_config
from simlearn.errors import UserError
from simlearn.inference import load_model
from simlearn.inference.model_folder import CARD, CONFIG, PREPROCESSING, WEIGHTS


def test_export_load_round_trip_gives_the_checkpoints_embeddings(exported):
    loaded = load_model(exported["ckpt"])
    model = simlearn.load(exported["folder"])
    assert model.embedding_dim == 64 and model.preprocessing == loaded.preprocessing
    pngs = exported["pngs"]
    # the checkpoint's own way: its preprocessing and encoder, batch by batch
    from simlearn.data.images import ImageLoader

    prepared = torch.stack([ImageLoader(loaded.preprocessing)(p) for p in pngs])
    with torch.no_grad():
        expected = loaded.encoder(prepared).numpy()
    from_paths = model.embed(pngs)
    assert from_paths.dtype == np.float32 and from_paths.shape == (5, 64)
    np.testing.assert_allclose(from_paths, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(from_paths, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(model.embed([str(p) for p in pngs]), expected, rtol=0, atol=1e-6)
    images = [Image.open(p) for p in pngs]
    np.testing.assert_allclose(model.embed(images), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.embed([np.asarray(i) for i in images]), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.embed(prepared), expected, rtol=0, atol=1e-6)  # a batch tensor
    np.testing.assert_allclose(model.embed(list(prepared)), expected, rtol=0, atol=1e-6)  # a list of tensors
    single = model.embed(images[4])  # one image: one vector
    assert single.shape == (64,)
    np.testing.assert_allclose(single, expected[4], rtol=0, atol=1e-6)
    # the checkpoint itself loads the same way
    np.testing.assert_allclose(simlearn.load(exported["ckpt"]).embed(pngs), from_paths, rtol=0, atol=1e-6)
    with pytest.raises(UserError, match=r"float of shape \(1, 8, 8\)"):
        model.embed(torch.zeros(3, 32, 32))
    with pytest.raises(UserError, match="cannot embed a dict"):
        model.embed({"image": 1})


def test_the_folder_holds_weights_config_and_preprocessing(exported):
    folder, loaded = exported["folder"], load_model(exported["ckpt"])
    assert sorted(p.name for p in folder.iterdir()) == sorted([CARD, CONFIG, PREPROCESSING, WEIGHTS])
    weights = load_file(str(folder / WEIGHTS))
    state = loaded.encoder.state_dict()
    assert set(weights) == set(state)
    assert all(torch.equal(weights[k], state[k]) for k in state)
    config = json.loads((folder / CONFIG).read_text())
    assert config["library_name"] == "simlearn" and config["simlearn_version"] == simlearn.__version__
    assert config["backbone"]["_target_"] == "simlearn.models.SmallCNN" and config["head"]["out_dim"] == 64
    assert config["embedding_dim"] == 64
    assert json.loads((folder / PREPROCESSING).read_text()) == loaded.preprocessing
    assert oct(os.stat(folder / WEIGHTS).st_mode & 0o044) == oct(0o044)  # readable by others, as files are shared


def test_bad_weights_in_a_folder_are_one_line_with_the_fix(exported, tmp_path):
    import shutil

    from safetensors.torch import save_file

    folder = tmp_path / "model"
    shutil.copytree(exported["folder"], folder)
    (folder / WEIGHTS).write_bytes(b"\x00" * 40)  # a download cut short
    with pytest.raises(UserError, match=r"is not a readable safetensors file .*Fix: export the folder again") as error:
        simlearn.load(folder)
    assert "\n" not in str(error.value)
    weights = load_file(str(exported["folder"] / WEIGHTS))
    first = sorted(weights)[0]
    weights[first] = torch.zeros(3, 3)  # another architecture's tensor under the same name
    del weights[sorted(weights)[-1]]
    save_file(weights, str(folder / WEIGHTS))
    with pytest.raises(UserError) as error:
        simlearn.load(folder)
    message = str(error.value)
    assert "\n" not in message and "1 of its" in message and "tensors are missing" in message
    assert f"e.g. {first} is [3, 3] in the file" in message and "the file holds" in message


def test_search_embed_and_serve_take_a_model_folder_as_they_take_its_checkpoint(exported, tmp_path):
    """ckpt_path= of simlearn-search, -embed and -serve takes a model folder (a shared model, without its training
    checkpoint): the same results as the checkpoint it was exported from."""
    from simlearn.inference.embedding_files import embed_dataset
    from simlearn.inference.search import search
    from simlearn.serve.service import open_service

    gallery, digits = tmp_path / "gallery", load_digits()
    for index in range(60):  # 6 per digit on average: enough for the seeded train/val/test split of simlearn-embed
        path = gallery / str(digits.target[index]) / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[index] / 16 * 255).round().astype(np.uint8)).save(path)
    found = {}
    for kind, model in (("ckpt", exported["ckpt"]), ("folder", exported["folder"])):
        overrides = [f"ckpt_path={model}", "device=cpu", "cache=false", "grid=null", "results=null"]
        cfg = compose_config([*overrides, f"query={exported['pngs'][0]}", f"gallery={gallery}", "k=3"], "search",
                             tmp_path / kind / "search")  # fmt: skip
        found[kind, "search"] = [(r["path"], round(r["cosine"], 5)) for r in search(cfg)[0]["results"]]
        cfg = compose_config([f"ckpt_path={model}", "device=cpu", "parquet=false", "data=image_folder",
                              f"data.root={gallery}", "data.channels=1", "data.num_workers=0"], "embed",
                             tmp_path / kind / "embed")  # fmt: skip
        npz = [np.load(path) for name, path in sorted(embed_dataset(cfg).items()) if name != "parquet"]
        found[kind, "embed"] = ([p for f in npz for p in f["paths"]], np.concatenate([f["embeddings"] for f in npz]))
        cfg = compose_config([f"ckpt_path={model}", "device=cpu", "cache=false", f"gallery={gallery}"], "serve",
                             tmp_path / kind / "serve")  # fmt: skip
        service = open_service(cfg)
        upload = service.search_upload(exported["pngs"][0].read_bytes(), 3)["results"]
        found[kind, "serve"] = [(r["path"], round(r["cosine"], 5)) for r in upload]
    assert found["folder", "search"] == found["ckpt", "search"] and len(found["ckpt", "search"]) == 3
    assert found["folder", "embed"][0] == found["ckpt", "embed"][0] and len(found["ckpt", "embed"][0]) == 60
    np.testing.assert_allclose(found["folder", "embed"][1], found["ckpt", "embed"][1], rtol=0, atol=1e-6)
    assert found["folder", "serve"] == found["ckpt", "serve"] and len(found["ckpt", "serve"]) == 3
    # the embeddings record the weights file they came from, which simlearn-search then recognises
    assert str(npz[0]["ckpt_path"]) == str((exported["folder"] / WEIGHTS).resolve())
    assert load_model(exported["folder"] / CONFIG).path == exported["folder"] / WEIGHTS  # a file of it names it


def test_a_model_folder_without_data_or_a_path_that_is_neither_is_one_line(exported, tmp_path, capfd):
    from .helpers import run_main

    folder = exported["folder"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a model")
    cases = [
        ("simlearn.cli.embed", [f"ckpt_path={folder}", "device=cpu"],
         r"is a model folder .*not the data it was trained on; name"),
        ("simlearn.cli.serve", [f"ckpt_path={folder}", "port=0", "device=cpu"],
         r"is a model folder .*serve a gallery=FOLDER"),
        ("simlearn.cli.eval", [f"ckpt_path={folder}"], r"is a model folder .*give the training checkpoint"),
        ("simlearn.cli.search", [f"ckpt_path={tmp_path / 'empty'}", f"query={exported['pngs'][0]}",
                                 f"gallery={tmp_path}"], r"not a simlearn model folder: it lacks"),
        ("simlearn.cli.search", [f"ckpt_path={tmp_path / 'notes.txt'}", f"query={exported['pngs'][0]}",
                                 f"gallery={tmp_path}"], r"is not a readable PyTorch checkpoint"),
        ("simlearn.cli.search", [f"ckpt_path={tmp_path / 'nowhere'}", f"query={exported['pngs'][0]}",
                                 f"gallery={tmp_path}"], r"does not exist; give a \.ckpt .* or a model folder"),
    ]  # fmt: skip
    for module, args, expected in cases:
        result = run_main(module, *args, f"hydra.run.dir={tmp_path / 'runs' / module}", capfd=capfd)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, (module, args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-2000:]
        assert re.search(expected, lines[0]), (expected, lines[0])
