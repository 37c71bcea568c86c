"""Pushing a model folder to the Hugging Face Hub (simlearn/export/hub.py): offline or without credentials it is one
line and keeps the folder."""

from __future__ import annotations

import pytest

from simlearn.errors import UserError
from simlearn.export import export
from simlearn.export.hub import push_to_hub
from simlearn.inference.model_folder import CARD, WEIGHTS

from .helpers import export_cfg


def test_push_without_credentials_or_offline_is_one_line_and_keeps_the_folder(exported, tmp_path, monkeypatch):
    from huggingface_hub import constants

    folder = exported["folder"]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(UserError, match="no credentials .*kept at") as error:
        push_to_hub(folder, "someone/digits")
    assert "\n" not in str(error.value)
    # credentials but no Hub to reach (a closed local port)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(UserError, match="could not push .*someone/digits .*kept at"):
        push_to_hub(folder, "someone/digits", token="hf_not_a_token")
    with pytest.raises(UserError, match="is not a Hub repository id"):
        push_to_hub(folder, "no spaces/allowed here")

    # the whole command offline: one line, and the exported folder is kept for a later push
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "pushed"
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set.*kept at") as error:
        export(export_cfg(exported["ckpt"], out, tmp_path / "run", "push_to_hub=someone/digits"))
    assert "\n" not in str(error.value)
    assert (out / WEIGHTS).is_file() and (out / CARD).is_file()
    with pytest.raises(UserError, match="is not a Hub repository id"):  # a bad id fails before anything is written
        export(export_cfg(exported["ckpt"], tmp_path / "never", tmp_path / "run2", "push_to_hub=a/b/c"))
    assert not (tmp_path / "never").exists()
