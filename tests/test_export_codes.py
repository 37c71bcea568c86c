"""A hashing model (head=hash) exported: the ONNX graph's second output ``codes`` and the TorchScript module's
``codes`` method are pack_codes of the embeddings (and the command's check catches codes that are not), and the model
folder records ``code_bits`` so that simlearn.load(folder) is a hashing model with the checkpoint's codes."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from simlearn.config import compose_config
from simlearn.errors import UserError
from simlearn.export import export
from simlearn.export.formats import check_codes
from simlearn.inference import load_model
from simlearn.retrieval.codes import encoder_code_bits, pack_codes

from .helpers import export_cfg, run_training

BITS = 16


@pytest.fixture(scope="module")
def hash_ckpt(tmp_path_factory):
    """A 16-bit hashing model trained for a few batches of one digits epoch (its weights only need to be some)."""
    run = tmp_path_factory.mktemp("hash_run")
    run_training(run, "head=hash", f"head.bits={BITS}", "trainer.max_epochs=1", "+trainer.limit_train_batches=2")
    return next((run / "checkpoints").glob("*.ckpt"))


@pytest.mark.slow
def test_the_onnx_export_of_a_hash_model_outputs_its_packed_codes(hash_ckpt, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = load_model(hash_ckpt)
    images = torch.randn(9, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model.encoder(images).numpy()
    path = export(compose_config([f"ckpt_path={hash_ckpt}", "format=onnx"], "export", tmp_path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["embedding", "codes"]
    for batch in (images, images[:1]):  # dynamic batch dimension
        embeddings, codes = session.run(["embedding", "codes"], {"image": batch.numpy()})
        np.testing.assert_allclose(embeddings, expected[: len(batch)], atol=1e-5)
        assert codes.dtype == np.uint8 and codes.shape == (len(batch), BITS // 8)
        np.testing.assert_array_equal(codes, pack_codes(expected[: len(batch)]))
    assert len(np.unique(pack_codes(expected), axis=0)) > 1  # the codes differ: the comparison can fail
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["code_bits"] == BITS and sidecar["codes"]["shape"] == ["batch", BITS // 8]
    assert sidecar["output"]["normalized"] is False


@pytest.mark.slow
def test_the_torchscript_export_of_a_hash_model_has_a_codes_method(hash_ckpt, tmp_path, capsys):
    model = load_model(hash_ckpt)
    images = torch.randn(9, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model.encoder(images).numpy()
    path = export(compose_config([f"ckpt_path={hash_ckpt}", "format=torchscript"], "export", tmp_path))
    assert "check: the codes of a batch of 8 equal pack_codes" in capsys.readouterr().out
    scripted = torch.jit.load(str(path))
    for batch in (images, images[:1]):  # one output, the embedding, as a float model's; the codes by their method
        with torch.no_grad():
            embeddings, codes = scripted(batch).numpy(), scripted.codes(batch).numpy()
        np.testing.assert_allclose(embeddings, expected[: len(batch)], atol=1e-5)
        assert codes.dtype == np.uint8 and codes.shape == (len(batch), BITS // 8)
        np.testing.assert_array_equal(codes, pack_codes(expected[: len(batch)]))
    assert len(np.unique(pack_codes(expected), axis=0)) > 1  # the codes differ: the comparison can fail
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["codes"] == {"method": "codes", "shape": ["batch", 2], "dtype": "uint8", "packing": "packbits"}
    # the check counts the images whose codes differ: against an encoder whose every sign is flipped, all of them
    flipped = copy.deepcopy(model.encoder)
    with torch.no_grad():
        for parameter in flipped.head.parameters():
            parameter.neg_()
    assert check_codes(path, "torchscript", model.encoder, images) == 0
    assert check_codes(path, "torchscript", flipped, images) == len(images)


@pytest.mark.slow
def test_a_hash_model_folder_records_code_bits_and_loads_as_a_hashing_model(hash_ckpt, tmp_path):
    folder = export(export_cfg(hash_ckpt, tmp_path / "model", tmp_path / "run"))
    config = json.loads((folder / "config.json").read_text())
    assert config["code_bits"] == BITS and config["normalized"] is False
    loaded = load_model(folder)
    assert encoder_code_bits(loaded.encoder) == BITS == encoder_code_bits(load_model(hash_ckpt).encoder)
    images = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    np.testing.assert_array_equal(
        pack_codes(loaded.embed_tensor(images)), pack_codes(load_model(hash_ckpt).embed_tensor(images))
    )
    # a config.json whose code_bits does not fit its head: one line, not a float model searching codes
    config["code_bits"] = None
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="code_bits=None, but its head config builds an encoder of 16-bit codes"):
        load_model(folder)


def test_a_float_model_folder_records_no_code_bits(exported):
    config = json.loads((exported["folder"] / "config.json").read_text())
    assert "code_bits" in config and config["code_bits"] is None and config["normalized"] is True
