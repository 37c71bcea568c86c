"""Using a trained checkpoint: simlearn-embed, simlearn-search (folder and npz galleries, faiss), simlearn-export,
and their user errors. One tiny checkpoint (digits, one epoch) is trained for the whole module."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from simlearn.checkpoints import restore
from simlearn.config import compose_config
from simlearn.errors import UserError
from simlearn.export import export
from simlearn.inference import load_model
from simlearn.inference.embedding_files import embed_dataset
from simlearn.inference.search import search
from simlearn.retrieval import gallery_from_npz, run_search
from simlearn.train import train

from .helpers import run_main


def save_digit(path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image / 16 * 255).round().astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch digits checkpoint, a query folder (one PNG per digit) and a gallery folder (200 PNGs in class
    folders, plus a broken PNG and a text file)."""
    root = tmp_path_factory.mktemp("usage")
    train(compose_config(["logger=none", "trainer.max_epochs=1"], output_dir=root / "run"))  # default reports: plots
    digits = load_digits()
    for i in range(10):
        index = int(np.flatnonzero(digits.target == i)[0])
        save_digit(root / "query" / str(i) / f"{index}.png", digits.images[index])
    for index in range(100, 300):
        save_digit(root / "gallery" / str(digits.target[index]) / f"{index}.png", digits.images[index])
    (root / "gallery" / "3" / "broken.png").write_bytes(b"not a png")
    (root / "gallery" / "notes.txt").write_text("not an image")
    return {
        "root": root,
        "run": root / "run",
        "ckpt": next((root / "run" / "checkpoints").glob("best-epoch*.ckpt")),
        "query": root / "query",
        "gallery": root / "gallery",
    }


def search_config(trained, out, *overrides):
    return compose_config(
        [
            f"ckpt_path={trained['ckpt']}",
            f"query={trained['query']}",
            f"gallery={trained['gallery']}",
            f"paths.log_dir={trained['root'] / 'outputs'}",
            "device=cpu",
            *overrides,
        ],
        config_name="search",
        output_dir=out,
    )


def test_training_writes_the_plots_by_default(trained):
    for name in ("embedding_scatter.png", "retrieval_grid.png"):
        assert (trained["run"] / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_embed_writes_every_split_to_npz_and_parquet(trained, tmp_path):
    cfg = compose_config([f"ckpt_path={trained['ckpt']}", "device=cpu"], config_name="embed", output_dir=tmp_path)
    paths = embed_dataset(cfg)
    assert sorted(paths) == ["parquet", "test", "train", "val"]
    test = np.load(paths["test"])
    assert {"embeddings", "labels", "index", "digit", "parity", "magnitude", "class_names"} <= set(test.files)
    assert test["class_names"].tolist() == [str(d) for d in range(10)]
    # the same embeddings as the training run's test split (the same checkpoint)
    run = np.load(trained["run"] / "embeddings.npz")
    np.testing.assert_allclose(test["embeddings"], run["embeddings"], atol=1e-5)
    np.testing.assert_array_equal(test["labels"], run["labels"])
    sizes = {split: len(np.load(paths[split])["embeddings"]) for split in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797 and sizes["test"] == 450

    import pyarrow.parquet as pq

    table = pq.read_table(paths["parquet"])
    assert table.num_rows == 1797
    assert {"split", "index", "label", "class_name", "digit", "embedding"} <= set(table.column_names)
    in_test = np.array(table.column("split").to_pylist()) == "test"
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist())[in_test], test["embeddings"])


def test_embed_image_files_of_another_dataset_keeps_their_paths(trained, tmp_path):
    """Any data with images will do (its label field need not match the checkpoint's loss); file data keeps paths,
    which a search of the npz then shows."""
    overrides = [
        f"ckpt_path={trained['ckpt']}",
        "data=image_folder",
        f"data.root={trained['gallery']}",
        "data.channels=1",
        "data.image_size=8",
        "data.num_classes=10",
        "data.num_workers=0",
        "splits=[train,test]",
        "parquet=false",
    ]
    paths = embed_dataset(compose_config(overrides, config_name="embed", output_dir=tmp_path))
    assert sorted(paths) == ["test", "train"]
    train = np.load(paths["train"])
    assert len(train["paths"]) == len(train["embeddings"]) and train["paths"][0].endswith(".png")
    assert not any(p.endswith("broken.png") for p in train["paths"])
    results = search(search_config(trained, tmp_path / "search", f"gallery={paths['train']}", "k=3"))
    assert all(item["path"].endswith(".png") for r in results for item in r["results"])


def test_image_files_are_preprocessed_like_the_training_data(trained, tmp_path):
    """A PNG of a test image embeds to (almost) the embedding of the same image inside the dataset."""
    cfg = compose_config([f"ckpt_path={trained['ckpt']}"], config_name="eval", output_dir=tmp_path)
    restored = restore(cfg)
    test = restored.datamodule.datasets["test"]
    rows = test.indices[:20].tolist()
    digits = load_digits()
    files = []
    for row in rows:
        files.append(tmp_path / f"{row}.png")
        save_digit(files[-1], digits.images[row])
    loaded = load_model(trained["ckpt"])
    from_files = loaded.embed_files(files).embeddings
    with torch.no_grad():
        from_data = restored.model.encoder.eval()(test.__getitems__(list(range(20)))["image"]).numpy()
    cos = (from_files * from_data).sum(axis=1)
    assert cos.min() > 0.999


def test_search_a_folder_gallery_prints_writes_and_skips_unreadable_files(trained, tmp_path, capsys):
    results = search(search_config(trained, tmp_path, "k=5"))
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
    cache = list((trained["root"] / "outputs" / "search" / "cache").glob("gallery-*.npz"))
    assert len(cache) == 1
    stamp = cache[0].stat().st_mtime_ns
    query = next((trained["query"] / "7").glob("*.png"))
    single = search(search_config(trained, tmp_path / "single", f"query={query}", "k=3"))
    assert len(single) == 1 and single[0]["class_name"] == "7" and len(single[0]["results"]) == 3
    assert cache[0].stat().st_mtime_ns == stamp


def test_npz_gallery_uses_a_faiss_index_built_once_and_rebuilt_when_stale(trained, tmp_path):
    pytest.importorskip("faiss")
    cfg = compose_config([f"ckpt_path={trained['ckpt']}", "device=cpu"], config_name="embed", output_dir=tmp_path)
    npz = embed_dataset(cfg)["test"]
    exact = search(search_config(trained, tmp_path / "exact", f"gallery={npz}", "faiss_threshold=null"))
    indexed = search(search_config(trained, tmp_path / "faiss", f"gallery={npz}", "faiss_threshold=1"))
    index_file = npz.with_suffix(".faiss")
    assert index_file.is_file()
    for a, b in zip(exact, indexed, strict=True):
        assert [r["id"] for r in a["results"]] == [r["id"] for r in b["results"]]
        np.testing.assert_allclose([r["cosine"] for r in a["results"]], [r["cosine"] for r in b["results"]], atol=1e-5)
    assert indexed[0]["results"][0]["name"].startswith("test[")  # split and dataset index of the npz item

    loaded = load_model(trained["ckpt"])
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


def test_export_onnx_and_torchscript_give_the_same_embeddings(trained, tmp_path):
    loaded = load_model(trained["ckpt"])
    images = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = loaded.encoder(images).numpy()

    ts_path = export(compose_config([f"ckpt_path={trained['ckpt']}", "format=torchscript"], "export", tmp_path))
    scripted = torch.jit.load(str(ts_path))
    for batch in (images, images[:1]):
        np.testing.assert_allclose(scripted(batch).detach().numpy(), expected[: len(batch)], atol=1e-5)

    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx_path = export(compose_config([f"ckpt_path={trained['ckpt']}", "format=onnx"], "export", tmp_path))
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (images, images[:1]):  # dynamic batch dimension
        (embeddings,) = session.run(["embedding"], {"image": batch.numpy()})
        np.testing.assert_allclose(embeddings, expected[: len(batch)], atol=1e-5)
    sidecar = json.loads(onnx_path.with_name(onnx_path.name + ".json").read_text())
    assert sidecar["preprocessing"] == loaded.preprocessing and sidecar["output"]["shape"] == ["batch", 64]


def test_search_takes_postprocessing_steps_in_their_order(trained, tmp_path, capsys):
    # postprocess=[dba,aqe] composes the config group in that order; the command's results are those steps applied to
    # the exact search of its queries' and gallery's embeddings, each with the query's own cosine to the item
    from simlearn.inference import load_model
    from simlearn.inference.search import load_queries
    from simlearn.retrieval import load_gallery
    from simlearn.retrieval.postprocess import postprocessed_top_k, postprocessors

    cfg = search_config(trained, tmp_path / "pp", "k=5", "postprocess=[dba,aqe]")
    results = search(cfg)
    steps = postprocessors(cfg.postprocess)
    assert [type(step).__name__ for step in steps] == ["DatabaseAugmentation", "AlphaQueryExpansion"]
    model = load_model(trained["ckpt"], "cpu")
    gallery = load_gallery(cfg.gallery, model, cfg)
    queries = load_queries(cfg.query, model, gallery.classes)
    cos, idx = postprocessed_top_k(queries.embeddings, gallery.embeddings, 5, steps)
    assert [[item["id"] for item in r["results"]] for r in results] == idx.tolist()
    np.testing.assert_allclose([[item["cosine"] for item in r["results"]] for r in results], cos, atol=1e-6)
    plain = queries.embeddings / np.linalg.norm(queries.embeddings, axis=1, keepdims=True)
    unit = gallery.embeddings / np.linalg.norm(gallery.embeddings, axis=1, keepdims=True)
    np.testing.assert_allclose(cos, np.einsum("qd,qkd->qk", plain, unit[idx]), atol=1e-6)  # the query's own cosine
    assert "post-processed: dba+aqe" in " ".join(capsys.readouterr().out.split())  # the printout says how


def test_search_user_errors(trained, tmp_path):
    not_image = tmp_path / "photo.png"
    not_image.write_text("not an image")
    with pytest.raises(UserError, match="is not an image"):
        search(search_config(trained, tmp_path / "a", f"query={not_image}"))
    with pytest.raises(UserError, match="does not exist"):
        search(search_config(trained, tmp_path / "b", f"query={tmp_path / 'missing.png'}"))
    other = tmp_path / "other.npz"
    np.savez(other, embeddings=np.ones((20, 2), np.float32), labels=np.arange(20) % 2)
    with pytest.raises(UserError, match="2-d embeddings but the checkpoint .* makes 64-d"):
        search(search_config(trained, tmp_path / "c", f"gallery={other}"))
    with pytest.raises(UserError, match="gallery has only"):
        search(search_config(trained, tmp_path / "d", "k=500"))
    with pytest.raises(UserError, match="is not an export format; valid: \\['hf', 'onnx', 'torchscript'\\]"):
        export(compose_config([f"ckpt_path={trained['ckpt']}", "format=tflite"], "export", tmp_path / "e"))


@pytest.mark.parametrize("case", ["query-not-an-image", "gallery-of-another-model"])
def test_cli_user_errors_exit_2_without_traceback(trained, tmp_path, case, capfd):
    not_image = tmp_path / "photo.jpg"
    not_image.write_text("not an image")
    other = tmp_path / "other.npz"
    np.savez(other, embeddings=np.ones((20, 2), np.float32))
    common = [f"ckpt_path={trained['ckpt']}", f"hydra.run.dir={tmp_path / 'run'}"]
    args, fragment = {
        "query-not-an-image": (
            [*common, f"query={not_image}", f"gallery={trained['gallery']}"],
            "is not an image that can be read",
        ),
        "gallery-of-another-model": (
            [*common, f"query={trained['query']}", f"gallery={other}"],
            "holds 2-d embeddings but the checkpoint",
        ),
    }[case]
    env = {"SIMLEARN_LOG_DIR": str(tmp_path / "outputs"), "COLUMNS": "200"}
    result = run_main("simlearn.cli.search", *args, capfd=capfd, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "error:" in result.stderr and fragment in result.stderr.replace("\n", " ")
    assert not os.path.exists(tmp_path / "run" / "search.png")
