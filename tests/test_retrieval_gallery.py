"""simlearn/retrieval/gallery.py: a gallery built from arrays, the one search of a gallery, post-processed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import simlearn.retrieval.gallery as gallery_module
from simlearn.errors import UserError
from simlearn.inference import InferenceModel
from simlearn.retrieval import Gallery, gallery_from_folder, gallery_from_npz, run_search, search_index

from .serving import PER_CLASS, serve_config


def _arrays(n: int = 12, d: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "embeddings": rng.normal(size=(n, d)).astype(np.float32),
        "labels": np.arange(n) % 3,
        "class_names": np.array(["cat", "dog", "eel"]),
        "index": np.arange(n),
        "split": np.array("test"),
        "digit": np.arange(n) % 3,
        "ckpt_path": np.array("/nowhere/model.ckpt"),
    }


MODEL = SimpleNamespace(embedding_dim=4, path=Path("/nowhere/model.ckpt"))


def test_a_gallery_from_arrays_is_the_gallery_of_the_npz_holding_them(tmp_path):
    arrays = _arrays()
    np.savez(tmp_path / "g.npz", **arrays)
    from_file = gallery_from_npz(tmp_path / "g.npz", MODEL)
    built = Gallery.from_arrays(arrays, Path("split:test"), MODEL)
    np.testing.assert_array_equal(built.embeddings, from_file.embeddings)
    assert built.labels == from_file.labels == ["cat", "dog", "eel"] * 4
    assert built.ids == from_file.ids and built.ids[:2] == ["test[0]", "test[1]"]
    assert sorted(built.fields) == sorted(from_file.fields) == ["digit"]  # every array of one row per item
    assert built.index_path is None and from_file.index_path == tmp_path / "g.faiss"
    assert search_index(built, faiss_threshold=None) is None  # small: searched exactly in memory


def test_arrays_that_do_not_fit_are_one_line_naming_the_source():
    bad = {**_arrays(), "labels": np.arange(5)}
    with pytest.raises(UserError, match=r"gallery='split:test' does not hold one entry per item") as error:
        Gallery.from_arrays(bad, Path("split:test"), MODEL)
    assert "\n" not in str(error.value)


def test_a_post_processed_search_of_a_gallery_is_the_brute_force_step_and_reports_the_querys_cosines():
    # simlearn-search and the service re-rank through the same function (run_search / postprocessed_top_k)
    from simlearn.retrieval.postprocess import AlphaQueryExpansion, DatabaseAugmentation, postprocessed_top_k

    from .test_retrieval_postprocess import _case, _cos, brute_aqe, brute_dba

    q, g, gallery, _ = _case("query-gallery")
    arrays = {"embeddings": g.astype(np.float32), "labels": np.zeros(len(g), dtype=np.int64)}
    built = Gallery.from_arrays(
        {**arrays, "embeddings": g}, Path("split:test"), SimpleNamespace(embedding_dim=5, path=MODEL.path)
    )
    for step, brute in ((AlphaQueryExpansion(n=3), brute_aqe), (DatabaseAugmentation(n=2), brute_dba)):
        found = run_search(q, built, 6, postprocess=[step])
        cos, idx, method = found.cosines, found.indices, found.method
        np.testing.assert_array_equal(idx, brute(q, g, False, step.n, step.alpha)[:, :6])
        np.testing.assert_allclose(cos, np.take_along_axis(_cos(q, g), idx, axis=1), atol=1e-12)  # the query's own
        assert f"post-processed: {step.name}" in method
    # an item's neighbours (the service): its own row left out, the others in the steps' order
    own = np.array([3, 29] + [-1] * (len(q) - 2))[: len(q)]
    _, with_own = postprocessed_top_k(q, g, 7, [AlphaQueryExpansion(n=3)])
    _, without = postprocessed_top_k(q, g, 6, [AlphaQueryExpansion(n=3)], exclude=own)
    for row, mine in zip(range(len(q)), own, strict=True):
        expected = [i for i in with_own[row] if i != mine][:6]
        assert without[row].tolist() == expected


def test_search_and_serve_refuse_an_unknown_step_in_one_line(tmp_path, capfd):
    from .helpers import run_main
    from .test_errors import assert_clean_failure

    for module in ("simlearn.cli.search", "simlearn.cli.serve"):  # the config group postprocess, by option name
        args = ["ckpt_path=/nowhere.ckpt", "postprocess=[qe]", f"hydra.run.dir={tmp_path / module}"]
        if module.endswith("search"):
            args += ["query=/nowhere.png", "gallery=/nowhere"]
        result = run_main(module, *args, capfd=capfd)
        assert_clean_failure(result, "error:", "postprocess=", "'qe' is not an option of the config group postprocess")
        assert result.returncode == 2


def test_an_interrupted_gallery_embedding_resumes_from_its_saved_parts(
    service, gallery_dir, tmp_path, monkeypatch, capsys
):
    """The folder gallery is embedded in parts saved as they are done: a start interrupted after two parts embeds
    only the rest next time, and gives the same gallery as an uninterrupted start; a progress bar is shown."""
    monkeypatch.setattr(gallery_module, "CACHE_PART_FILES", 16)
    cfg = serve_config(service.model.path, gallery_dir, tmp_path / "cache", "batch_size=8")
    embedded_files = []

    class Interrupted(Exception):
        pass

    real_embed = InferenceModel.embed_files

    def interrupted(model, paths, *args, **kwargs):
        if len(embedded_files) >= 32:  # after two parts of 16 files
            raise Interrupted
        embedded_files.extend(paths)
        return real_embed(model, paths, *args, **kwargs)

    monkeypatch.setattr(InferenceModel, "embed_files", interrupted)
    with pytest.raises(Interrupted):
        gallery_from_folder(gallery_dir, service.model, cfg)
    parts = list((tmp_path / "cache").glob("*.parts/*.npz"))
    assert len(parts) == 2
    assert "embedding the gallery" in capsys.readouterr().err  # the progress bar (more than one batch)

    resumed_files = []

    def counted(model, paths, *args, **kwargs):
        resumed_files.extend(paths)
        return real_embed(model, paths, *args, **kwargs)

    monkeypatch.setattr(InferenceModel, "embed_files", counted)
    resumed = gallery_from_folder(gallery_dir, service.model, cfg)
    total = 10 * PER_CLASS + 1  # broken.png too
    assert len(resumed_files) == total - 32 and not set(resumed_files) & set(embedded_files)
    assert resumed.paths == service.gallery.paths and resumed.skipped == 1
    np.testing.assert_allclose(resumed.embeddings, service.gallery.embeddings, atol=1e-6)
    assert not list((tmp_path / "cache").glob("*.parts"))  # the whole cache replaced its parts
    resumed_files.clear()
    again = gallery_from_folder(gallery_dir, service.model, cfg)  # now from the whole cache
    assert resumed_files == [] and again.paths == resumed.paths
