"""ONNX and TorchScript exports (simlearn/export/formats.py): the checkpoint's embeddings, a dynamic batch, the
sidecar."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from simlearn.config import compose_config
from simlearn.export import export
from simlearn.inference import load_model


def test_export_onnx_and_torchscript_give_the_same_embeddings(checkpoint_folders, tmp_path):
    loaded = load_model(checkpoint_folders["ckpt"])
    images = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = loaded.encoder(images).numpy()

    ts_path = export(
        compose_config([f"ckpt_path={checkpoint_folders['ckpt']}", "format=torchscript"], "export", tmp_path)
    )
    scripted = torch.jit.load(str(ts_path))
    for batch in (images, images[:1]):
        np.testing.assert_allclose(scripted(batch).detach().numpy(), expected[: len(batch)], atol=1e-5)

    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx_path = export(compose_config([f"ckpt_path={checkpoint_folders['ckpt']}", "format=onnx"], "export", tmp_path))
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (images, images[:1]):  # dynamic batch dimension
        (embeddings,) = session.run(["embedding"], {"image": batch.numpy()})
        np.testing.assert_allclose(embeddings, expected[: len(batch)], atol=1e-5)
    sidecar = json.loads(onnx_path.with_name(onnx_path.name + ".json").read_text())
    assert sidecar["preprocessing"] == loaded.preprocessing and sidecar["output"]["shape"] == ["batch", 64]


def test_an_export_already_there_is_not_written_over_without_overwrite(checkpoint_folders, tmp_path):
    from simlearn.errors import UserError

    given = [f"ckpt_path={checkpoint_folders['ckpt']}", "format=torchscript", f"out={tmp_path / 'encoder.pt'}"]
    first = export(compose_config(given, "export", tmp_path))
    before = first.read_bytes()
    with pytest.raises(UserError, match=r"encoder.pt' .*already exist\(s\).*overwrite=true") as error:
        export(compose_config(given, "export", tmp_path))
    assert "\n" not in str(error.value) and "encoder.pt.json" in str(error.value)
    assert first.read_bytes() == before  # untouched
    assert export(compose_config([*given, "overwrite=true"], "export", tmp_path)) == first  # replaced on request
    # only the sidecar left over (a file removed by hand): refused too, it would be replaced
    first.unlink()
    with pytest.raises(UserError, match=r"encoder.pt.json' already exist"):
        export(compose_config(given, "export", tmp_path))
    (tmp_path / "a_file").write_text("in the way")
    with pytest.raises(UserError, match=r"enc.pt': its folder cannot be made \(File exists"):
        export(compose_config([*given[:2], f"out={tmp_path / 'a_file' / 'enc.pt'}"], "export", tmp_path))
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match=r"is a folder; give the file to write, e.g. out=.*folder/encoder.pt\."):
        export(compose_config([*given[:2], f"out={tmp_path / 'folder'}"], "export", tmp_path))
