"""The search (simlearn/inference/search.py): broken input refused with one clear message (npz galleries with arrays
of different lengths or non-finite embeddings, non-finite queries), and a sound gallery searched exactly (a float64
brute force, ties to the lower index; faiss built once, approximate said so).

One tiny checkpoint (digits, one epoch, no plots) and its test-split npz serve the whole module."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from simlearn.config import compose_config
from simlearn.errors import UserError
from simlearn.export import export
from simlearn.inference import load_model
from simlearn.inference.embedding_files import embed_dataset
from simlearn.inference.search import search
from simlearn.retrieval import gallery_from_npz, run_search
from simlearn.train import train

from .helpers import folder_search_config, run_cli, run_main
from .test_retrieval_exact import reference_order


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A one-epoch digits checkpoint, its test split as an npz from simlearn-embed, and a query folder of 3 PNGs."""
    root = tmp_path_factory.mktemp("search_input")
    train(compose_config(["logger=none", "reports.plots=null", "trainer.max_epochs=1"], output_dir=root / "run"))
    ckpt = next((root / "run" / "checkpoints").glob("best-epoch*.ckpt"))
    embed_cfg = compose_config(
        [f"ckpt_path={ckpt}", "device=cpu", "splits=[test]", "parquet=false"], config_name="embed", output_dir=root
    )
    npz = embed_dataset(embed_cfg)["test"]
    digits = load_digits()
    for digit in (1, 4, 7):
        index = int(np.flatnonzero(digits.target == digit)[0])
        path = root / "query" / str(digit) / f"{index}.png"
        path.parent.mkdir(parents=True)
        Image.fromarray((digits.images[index] / 16 * 255).round().astype(np.uint8)).save(path)
    return {"root": root, "ckpt": ckpt, "npz": npz, "query": root / "query"}


def altered_npz(trained: dict[str, Path], path: Path, **changes: np.ndarray | None) -> Path:
    """A copy of the module's npz with some arrays replaced (None: removed)."""
    arrays = dict(np.load(trained["npz"]))
    for name, value in changes.items():
        if value is None:
            arrays.pop(name, None)
        else:
            arrays[name] = value
    np.savez(path, **arrays)
    return path


def search_config(trained: dict[str, Path], out: Path, *overrides: str):
    return compose_config(
        [
            f"ckpt_path={trained['ckpt']}",
            f"query={trained['query']}",
            f"gallery={trained['npz']}",
            f"paths.log_dir={trained['root'] / 'outputs'}",
            "device=cpu",
            "grid=null",
            *overrides,
        ],
        config_name="search",
        output_dir=out,
    )


def search_cli(trained: dict[str, Path], tmp_path: Path, gallery: Path, capfd=None):
    """``simlearn-search`` on ``gallery``: in a new process, or in this one (:func:`run_main`) given ``capfd``."""
    args = [f"ckpt_path={trained['ckpt']}", f"query={trained['query']}", f"gallery={gallery}", "device=cpu"]
    args.append(f"hydra.run.dir={tmp_path / 'run'}")
    env = {"SIMLEARN_LOG_DIR": str(tmp_path / "outputs"), "COLUMNS": "300"}
    if capfd is not None:
        return run_main("simlearn.cli.search", *args, capfd=capfd, env=env)
    return run_cli("-m", "simlearn.cli.search", *args, env=env)


def assert_one_clean_error(result, *fragments: str) -> str:
    """Exit status 2, no traceback, one ``error:`` message with every fragment; returns the message."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "nan" not in result.stdout.lower()
    message = result.stderr[result.stderr.index("error:") :].replace("\n", " ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# -- item counts that disagree ------------------------------------------------------------------------------------
def test_npz_with_fewer_labels_than_embeddings_is_refused_in_one_line(trained, tmp_path, capfd):
    labels = np.load(trained["npz"])["labels"]
    npz = altered_npz(trained, tmp_path / "short.npz", labels=labels[:10])
    result = search_cli(trained, tmp_path, npz, capfd)
    message = assert_one_clean_error(result, "'labels' has 10", "'embeddings' has 450", "simlearn-embed")
    assert "IndexError" not in message


@pytest.mark.parametrize(
    "name,make",
    [
        ("labels", lambda a: a["labels"][:-1]),
        ("labels", lambda a: np.concatenate([a["labels"], a["labels"][:5]])),
        ("paths", lambda a: np.array([f"img/{i}.png" for i in range(len(a["embeddings"]) - 3)])),
        ("index", lambda a: a["index"][:100]),
    ],
    ids=["labels-short", "labels-long", "paths-short", "index-short"],
)
def test_npz_arrays_of_another_length_name_both_lengths_and_the_fix(trained, tmp_path, name, make):
    arrays = np.load(trained["npz"])
    bad = make(arrays)
    npz = altered_npz(trained, tmp_path / "bad.npz", **{name: bad})
    with pytest.raises(UserError) as caught:
        gallery_from_npz(npz, load_model(trained["ckpt"]))
    message = str(caught.value)
    assert f"'{name}' has {len(bad)}" in message and f"'embeddings' has {len(arrays['embeddings'])}" in message
    assert f"simlearn-embed ckpt_path={trained['ckpt']}" in message
    assert "\n" not in message


def test_npz_labels_that_are_not_one_per_item_are_refused(trained, tmp_path):
    labels = np.load(trained["npz"])["labels"]
    npz = altered_npz(trained, tmp_path / "bad.npz", labels=np.stack([labels, labels], axis=1))
    with pytest.raises(UserError, match=r"'labels' must be 1-D .* shape \(450, 2\)"):
        gallery_from_npz(npz, load_model(trained["ckpt"]))


def test_npz_without_rows_is_refused(trained, tmp_path):
    npz = altered_npz(
        trained, tmp_path / "empty.npz", embeddings=np.zeros((0, 64), np.float32), labels=None, index=None
    )
    with pytest.raises(UserError, match="holds no embeddings"):
        gallery_from_npz(npz, load_model(trained["ckpt"]))


# -- non-finite embeddings ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_npz_with_nan_embeddings_is_refused_naming_the_rows(trained, tmp_path):
    embeddings = np.load(trained["npz"])["embeddings"].copy()
    embeddings[[3, 17, 200, 201, 202, 449]] = np.nan
    embeddings[5, 0] = np.inf
    npz = altered_npz(trained, tmp_path / "nan.npz", embeddings=embeddings)
    with pytest.raises(UserError) as caught:
        gallery_from_npz(npz, load_model(trained["ckpt"]))
    message = str(caught.value)
    assert "7 of its 450 embedding rows are not finite" in message
    assert "rows 3, 5, 17, 200, 201, …" in message and "simlearn-embed" in message
    assert "\n" not in message

    result = search_cli(trained, tmp_path, npz)
    assert_one_clean_error(result, "7 of its 450 embedding rows are not finite", "rows 3, 5, 17")
    assert "°" not in result.stdout and not (tmp_path / "run" / "search.json").exists()


def test_non_finite_query_embeddings_are_refused_and_never_printed(trained, tmp_path, capsys):
    """A checkpoint with NaN weights (training that diverged) embeds every query to NaN."""
    checkpoint = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    for value in checkpoint["state_dict"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))
    broken = tmp_path / "diverged.ckpt"
    torch.save(checkpoint, broken)
    with pytest.raises(UserError) as caught:
        search(search_config(trained, tmp_path / "a", f"ckpt_path={broken}"))
    message = str(caught.value)
    assert re.search(r"3 of the 3 query embeddings are not finite .*1/\d+\.png", message), message
    assert f"ckpt_path={broken}" in message
    assert "nan" not in capsys.readouterr().out.lower()

    gallery = gallery_from_npz(trained["npz"], load_model(trained["ckpt"]))
    queries = gallery.embeddings[:4].copy()
    queries[2, 1] = np.nan
    with pytest.raises(UserError, match=r"1 of the 4 query embeddings are not finite \(rows 2\)"):
        run_search(queries, gallery, 5)


def test_a_sound_npz_still_searches(trained, tmp_path):
    results = search(search_config(trained, tmp_path, "k=3"))
    assert len(results) == 3 and all(len(r["results"]) == 3 for r in results)
    assert all(np.isfinite(item["cosine"]) for r in results for item in r["results"])


# -- exact results ------------------------------------------------------------------------------------------------
def test_search_equals_a_float64_brute_force_ties_to_the_lower_index(trained, tmp_path):
    """simlearn-search, exactly and through a saved Flat index, gives the neighbours of a float64 brute force whose
    exact ties (duplicated gallery rows) go to the lower gallery index; an HNSW index says it is approximate."""
    arrays = np.load(trained["npz"])
    again = np.arange(0, 450, 9)  # 50 rows twice: exact ties
    npz = altered_npz(
        trained,
        tmp_path / "ties.npz",
        embeddings=np.concatenate([arrays["embeddings"], arrays["embeddings"][again]]),
        labels=np.concatenate([arrays["labels"], arrays["labels"][again]]),
        index=np.concatenate([arrays["index"], arrays["index"][again]]),
    )
    gallery = gallery_from_npz(npz, load_model(trained["ckpt"]))
    queries = gallery.embeddings[[0, 9, 17, 200, 449]] + np.float32(0.01)
    order, cos = reference_order(queries, gallery.embeddings, self_search=False)
    for threshold in (None, 1):  # searched exactly; through the saved faiss Flat index
        if threshold is not None:
            pytest.importorskip("faiss")
        result = run_search(queries, gallery, 8, faiss_threshold=threshold)
        found_cos, found, method = result.cosines, result.indices, result.method
        np.testing.assert_array_equal(found, order[:, :8])
        np.testing.assert_allclose(found_cos, np.take_along_axis(cos, found, axis=1), rtol=0, atol=1e-15)
        assert method.startswith("exact") and "APPROXIMATE" not in method and result.exact
    assert npz.with_suffix(".faiss").is_file()
    approximate = run_search(queries, gallery, 8, faiss_threshold=1, factory="HNSW32")
    assert "APPROXIMATE" in approximate.method and not approximate.exact


def test_search_a_folder_gallery_prints_writes_and_skips_unreadable_files(checkpoint_folders, tmp_path, capsys):
    results = search(folder_search_config(checkpoint_folders, tmp_path, "k=5"))
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at 80 columns, wherever the long tmp paths end
    assert len(results) == 10 and all(len(r["results"]) == 5 for r in results)
    assert "1 unreadable file(s) skipped" in out and "cosine" in out and "angle" in out
    first = results[0]["results"][0]
    assert first["path"].endswith(".png") and first["class_name"] is not None
    assert first["angle_deg"] == pytest.approx(np.degrees(np.arccos(min(1.0, first["cosine"]))), abs=1e-3)
    assert all(r["class_name"] is not None for r in results)  # query folders are gallery classes
    hits = sum(r["results"][0]["same_class"] for r in results)
    assert hits >= 8, f"top-1 hits {hits}/10"
    assert json.loads((tmp_path / "search.json").read_text()) == results
    assert (tmp_path / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a single query file, and the gallery embeddings now come from the cache
    cache = list((checkpoint_folders["root"] / "outputs" / "search" / "cache").glob("gallery-*.npz"))
    assert len(cache) == 1
    stamp = cache[0].stat().st_mtime_ns
    query = next((checkpoint_folders["query"] / "7").glob("*.png"))
    single = search(folder_search_config(checkpoint_folders, tmp_path / "single", f"query={query}", "k=3"))
    assert len(single) == 1 and single[0]["class_name"] == "7" and len(single[0]["results"]) == 3
    assert cache[0].stat().st_mtime_ns == stamp


def test_npz_gallery_uses_a_faiss_index_built_once_and_rebuilt_when_stale(checkpoint_folders, tmp_path):
    pytest.importorskip("faiss")
    cfg = compose_config(
        [f"ckpt_path={checkpoint_folders['ckpt']}", "device=cpu"], config_name="embed", output_dir=tmp_path
    )
    npz = embed_dataset(cfg)["test"]
    exact = search(
        folder_search_config(checkpoint_folders, tmp_path / "exact", f"gallery={npz}", "faiss_threshold=null")
    )
    indexed = search(
        folder_search_config(checkpoint_folders, tmp_path / "faiss", f"gallery={npz}", "faiss_threshold=1")
    )
    index_file = npz.with_suffix(".faiss")
    assert index_file.is_file()
    for a, b in zip(exact, indexed, strict=True):
        assert [r["id"] for r in a["results"]] == [r["id"] for r in b["results"]]
        np.testing.assert_allclose([r["cosine"] for r in a["results"]], [r["cosine"] for r in b["results"]], atol=1e-5)
    assert indexed[0]["results"][0]["name"].startswith("test[")  # split and dataset index of the npz item

    loaded = load_model(checkpoint_folders["ckpt"])
    gallery = gallery_from_npz(npz, loaded)
    queries = gallery.embeddings[:3]
    how = run_search(queries, gallery, 5, faiss_threshold=1).method
    assert "reused" in how
    # new embeddings in the same file: the saved index is stale and rebuilt
    arrays = dict(np.load(npz))
    arrays["embeddings"] = arrays["embeddings"][::-1].copy()
    np.savez(npz, **arrays)
    how = run_search(queries, gallery_from_npz(npz, loaded), 5, faiss_threshold=1).method
    assert "built and saved" in how


def test_search_takes_postprocessing_steps_in_their_order(checkpoint_folders, tmp_path, capsys):
    # postprocess=[dba,aqe] composes the config group in that order; the command's results are those steps applied to
    # the exact search of its queries' and gallery's embeddings, each with the query's own cosine to the item
    from simlearn.inference import load_model
    from simlearn.inference.search import load_queries
    from simlearn.retrieval import load_gallery
    from simlearn.retrieval.postprocess import postprocessed_top_k, postprocessors

    cfg = folder_search_config(checkpoint_folders, tmp_path / "pp", "k=5", "postprocess=[dba,aqe]")
    results = search(cfg)
    steps = postprocessors(cfg.postprocess)
    assert [type(step).__name__ for step in steps] == ["DatabaseAugmentation", "AlphaQueryExpansion"]
    model = load_model(checkpoint_folders["ckpt"], "cpu")
    gallery = load_gallery(cfg.gallery, model, cfg)
    queries = load_queries(cfg.query, model, gallery.classes)
    cos, idx = postprocessed_top_k(queries.embeddings, gallery.embeddings, 5, steps)
    assert [[item["id"] for item in r["results"]] for r in results] == idx.tolist()
    np.testing.assert_allclose([[item["cosine"] for item in r["results"]] for r in results], cos, atol=1e-6)
    plain = queries.embeddings / np.linalg.norm(queries.embeddings, axis=1, keepdims=True)
    unit = gallery.embeddings / np.linalg.norm(gallery.embeddings, axis=1, keepdims=True)
    np.testing.assert_allclose(cos, np.einsum("qd,qkd->qk", plain, unit[idx]), atol=1e-6)  # the query's own cosine
    assert "post-processed: dba+aqe" in " ".join(capsys.readouterr().out.split())  # the printout says how


def test_search_user_errors(checkpoint_folders, tmp_path):
    not_image = tmp_path / "photo.png"
    not_image.write_text("not an image")
    with pytest.raises(UserError, match="is not an image"):
        search(folder_search_config(checkpoint_folders, tmp_path / "a", f"query={not_image}"))
    with pytest.raises(UserError, match="does not exist"):
        search(folder_search_config(checkpoint_folders, tmp_path / "b", f"query={tmp_path / 'missing.png'}"))
    other = tmp_path / "other.npz"
    np.savez(other, embeddings=np.ones((20, 2), np.float32), labels=np.arange(20) % 2)
    with pytest.raises(UserError, match="2-d embeddings but the checkpoint .* makes 64-d"):
        search(folder_search_config(checkpoint_folders, tmp_path / "c", f"gallery={other}"))
    with pytest.raises(UserError, match="gallery has only"):
        search(folder_search_config(checkpoint_folders, tmp_path / "d", "k=500"))
    with pytest.raises(UserError, match="is not an export format; valid: \\['hf', 'onnx', 'torchscript'\\]"):
        export(compose_config([f"ckpt_path={checkpoint_folders['ckpt']}", "format=tflite"], "export", tmp_path / "e"))
