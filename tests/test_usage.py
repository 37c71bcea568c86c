"""Using a trained checkpoint as a user does: the run's default plots, and simlearn-search's user errors through its
main() (exit 2, no traceback). The checkpoint and its folders are `checkpoint_folders` (tests/conftest.py), shared
with the embed, search and export tests (test_inference_embedding_files.py, test_inference_search.py,
test_export_formats.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from .helpers import run_main


def test_training_writes_the_plots_by_default(checkpoint_folders):
    for name in ("embedding_scatter.png", "retrieval_grid.png"):
        assert (checkpoint_folders["run"] / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("case", ["query-not-an-image", "gallery-of-another-model"])
def test_cli_user_errors_exit_2_without_traceback(checkpoint_folders, tmp_path, case, capfd):
    not_image = tmp_path / "photo.jpg"
    not_image.write_text("not an image")
    other = tmp_path / "other.npz"
    np.savez(other, embeddings=np.ones((20, 2), np.float32))
    common = [f"ckpt_path={checkpoint_folders['ckpt']}", f"hydra.run.dir={tmp_path / 'run'}"]
    args, fragment = {
        "query-not-an-image": (
            [*common, f"query={not_image}", f"gallery={checkpoint_folders['gallery']}"],
            "is not an image that can be read",
        ),
        "gallery-of-another-model": (
            [*common, f"query={checkpoint_folders['query']}", f"gallery={other}"],
            "holds 2-d embeddings but the checkpoint",
        ),
    }[case]
    env = {"SIMLEARN_LOG_DIR": str(tmp_path / "outputs"), "COLUMNS": "200"}
    result = run_main("simlearn.cli.search", *args, capfd=capfd, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "error:" in result.stderr and fragment in result.stderr.replace("\n", " ")
    assert not os.path.exists(tmp_path / "run" / "search.png")
