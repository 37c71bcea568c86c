"""simlearn-export's export() (simlearn/export/command.py): a non-empty folder is never overwritten silently."""

from __future__ import annotations

import pytest
import yaml

import simlearn
from simlearn.errors import UserError
from simlearn.export import export
from simlearn.inference.model_folder import CARD, WEIGHTS

from .helpers import export_cfg


def test_a_non_empty_folder_is_not_overwritten_silently(exported, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty .*notes.txt.*overwrite=true"):
        export(export_cfg(exported["ckpt"], out, tmp_path / "a"))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    export(export_cfg(exported["ckpt"], out, tmp_path / "b", "overwrite=true", "license=mit"))
    assert (out / "notes.txt").read_text() == "mine" and (out / WEIGHTS).is_file()
    assert yaml.safe_load((out / CARD).read_text().split("---\n")[1])["license"] == "mit"
    with pytest.raises(UserError, match="is not a simlearn model folder: it lacks"):
        simlearn.load(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        simlearn.load(tmp_path / "nowhere")
