"""The split gallery (simlearn/serve/split_gallery.py): a checkpoint's data split served as the gallery, the same as
simlearn-embed's, embedded once per checkpoint, split and data."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image

import simlearn.serve.split_gallery as split_module
from simlearn.config import compose_config
from simlearn.inference.embedding_files import embed_dataset
from simlearn.serve import open_service
from simlearn.serve.service import checkpoint_path
from simlearn.serve.split_gallery import gallery_split

from .serving import (
    brute_force,
    one_line_error,
    png_bytes,
    serve_config,
)


@pytest.fixture(scope="module")
def embedded_test(trained_run, tmp_path_factory) -> dict[str, np.ndarray]:
    """The test split's npz as simlearn-embed writes it for the same checkpoint."""
    out = tmp_path_factory.mktemp("serve_embed")
    overrides = [f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", f"out_dir={out}", "splits=[test]"]
    paths = embed_dataset(compose_config([*overrides, "parquet=false", "device=cpu"], "embed", out / "run"))
    with np.load(paths["test"]) as arrays:
        return {name: arrays[name] for name in arrays.files}


def test_the_default_gallery_is_the_test_split_as_simlearn_embed_embeds_it(split_service, split_client, embedded_test):
    """No gallery given: the checkpoint's test split, the same items, labels, label fields and embeddings as
    simlearn-embed's test.npz; the neighbours of its items are the exact search over those embeddings."""
    assert gallery_split(None) == gallery_split("") == gallery_split("split:test") == "test"
    assert gallery_split("split:val") == "val" and gallery_split("data/digit_pngs") is None
    npz = embedded_test
    n = len(npz["embeddings"])
    assert split_service.size == n == 450
    np.testing.assert_allclose(split_service.gallery.embeddings, npz["embeddings"], atol=1e-6)
    names = npz["class_names"]
    assert split_service.gallery.labels == [str(names[label]) for label in npz["labels"]]
    info = split_client.get("/info").json()
    assert "test split" in info["gallery"]["source"] and "digits" in info["gallery"]["source"]
    assert info["gallery"]["has_images"] and info["gallery"]["fields"] == ["digit", "magnitude", "parity"]
    for i in (0, 17, 233, n - 1):
        answer = split_client.get(f"/items/{i}/neighbours", params={"k": 8}).json()
        ids, cos = brute_force(npz["embeddings"], npz["embeddings"][i], 8, exclude=i)
        assert [r["id"] for r in answer["results"]] == ids
        np.testing.assert_allclose([r["cosine"] for r in answer["results"]], cos, atol=1e-6)
        for item in [answer["query"], *answer["results"]]:
            j = item["id"]
            assert item["name"] == f"test[{npz['index'][j]}]" and item["image"] == f"/items/{j}"
            assert item["class_name"] == str(names[npz["labels"][j]])
            assert item["fields"] == {f: int(npz[f][j]) for f in ("digit", "magnitude", "parity")}
        assert [r["same_class"] for r in answer["results"]] == [npz["labels"][j] == npz["labels"][i] for j in ids]
    # an upload is searched in the same gallery
    query = png_bytes(Image.fromarray(np.kron(np.eye(8, dtype=np.uint8) * 255, np.ones((4, 4), np.uint8))))
    results = split_client.post("/search", files={"image": ("q.png", query, "image/png")}, data={"k": "5"}).json()
    vector = split_service.embed_image(query)
    assert [r["id"] for r in results["results"]] == brute_force(npz["embeddings"], vector, 5)[0]


def test_items_of_in_memory_data_are_pngs_of_their_pixels(split_service, split_client):
    """/items/{id} of a digits item: a 64 × 64 PNG, its 8 × 8 pixels (un-normalised) scaled up, nearest neighbour."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in (0, 99, split_service.size - 1):
        response = split_client.get(f"/items/{i}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(response.content))
        assert image.format == "PNG" and image.size == (64, 64) and image.mode == "L"
        row = int(split_service.gallery.name(i).removeprefix("test[").removesuffix("]"))
        pixels = (digits.images[row] * 255 / 16).round().astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(image), np.kron(pixels, np.ones((8, 8), dtype=np.uint8)))
    assert "0 to 449" in one_line_error(split_client.get("/items/450"), 404)
    for target in ("/items/../secret.txt", "/items/..%2F..%2Fetc%2Fpasswd", "/items/test[3]"):
        assert 400 <= split_client.get(target).status_code < 500


def test_a_split_gallery_is_embedded_once_per_checkpoint_split_and_data(
    trained_run, split_service, tmp_path, monkeypatch
):
    """The second start reads the cache (no embedding, the same gallery and images); another split, a rewritten
    checkpoint or changed data is embedded anew; cache=false writes nothing; run_dir=RUN serves the run's best
    checkpoint."""
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes((trained_run / "checkpoints" / "last.ckpt").read_bytes())
    cache = tmp_path / "cache"
    embedded = []
    real = split_module.embed_splits

    def counted(encoder, datamodule, splits, *args, **kwargs):
        embedded.extend(splits)
        return real(encoder, datamodule, splits, *args, **kwargs)

    monkeypatch.setattr(split_module, "embed_splits", counted)
    first = open_service(serve_config(ckpt, "split:test", cache))
    again = open_service(serve_config(ckpt, None, cache))
    assert embedded == ["test"]  # the second start read the cache
    np.testing.assert_array_equal(again.gallery.embeddings, first.gallery.embeddings)
    np.testing.assert_allclose(first.gallery.embeddings, split_service.gallery.embeddings, atol=1e-6)
    assert again.gallery.labels == first.gallery.labels and again.gallery.fields.keys() == first.gallery.fields.keys()
    assert again.item_image(7) == first.item_image(7) == split_service.item_image(7)
    val = open_service(serve_config(ckpt, "split:val", cache))
    assert embedded == ["test", "val"] and val.size != first.size and val.gallery.name(0).startswith("val[")
    os.utime(ckpt, ns=(time.time_ns(), time.time_ns() + 10**9))  # the checkpoint rewritten: its cache is stale
    open_service(serve_config(ckpt, "split:test", cache))
    assert embedded == ["test", "val", "test"]
    # the data changed under the same checkpoint (the digits' pixels, here): the cache is stale, the new pixels are
    # embedded and shown; the same data again reads the cache
    import simlearn.data.digits as digits_module

    real_digits = digits_module.load_digits

    def inverted():
        bunch = real_digits()
        bunch.images = 16.0 - bunch.images
        bunch.data = 16.0 - bunch.data
        return bunch

    monkeypatch.setattr(digits_module, "load_digits", inverted)
    changed = open_service(serve_config(ckpt, "split:test", cache))
    assert embedded == ["test", "val", "test", "test"]
    assert not np.allclose(changed.gallery.embeddings, first.gallery.embeddings, atol=1e-3)
    assert changed.item_image(7) != first.item_image(7)
    open_service(serve_config(ckpt, "split:test", cache))
    assert embedded == ["test", "val", "test", "test"]
    monkeypatch.setattr(digits_module, "load_digits", real_digits)
    uncached = open_service(serve_config(ckpt, None, tmp_path / "none", "cache=false"))
    assert not (tmp_path / "none").exists() and uncached.item_image(7) == first.item_image(7)
    np.testing.assert_array_equal(uncached.gallery.embeddings, first.gallery.embeddings)
    # run_dir: the best checkpoint of a training run, else its last one
    best = list((trained_run / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1 and checkpoint_path(None, trained_run) == best[0]
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert checkpoint_path(None, str(tmp_path / "run")) == tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert checkpoint_path(ckpt, None) == ckpt


def test_a_split_of_files_is_keyed_by_its_files_as_the_folder_cache(gallery_dir):
    """For data read from files, the split's key holds each file's name, size and modification time (the folder
    cache's simlearn.retrieval.cache.file_stats): a file rewritten changes it, the same files give the same key."""
    from types import SimpleNamespace

    import torch

    from simlearn.data.image_files import ImageDecoder, ImageFileDataset

    files = sorted(gallery_dir.rglob("*.png"))[:6]
    copies = []
    for n, path in enumerate(files):
        copies.append(gallery_dir.parent / "split_files" / f"{n}.png")
        copies[-1].parent.mkdir(exist_ok=True)
        copies[-1].write_bytes(path.read_bytes())
    fields = {"label": torch.arange(6) % 2}
    dataset = ImageFileDataset([str(p) for p in copies], fields, torch.arange(1, 5), None, ImageDecoder(1))
    datamodule = SimpleNamespace(
        datasets={"test": dataset},
        dataset_fields=lambda fields: {name: np.asarray(values) for name, values in fields.items()},
        dataset_class_names=["a", "b"],
    )
    key = split_module._data_key(datamodule, "test")
    assert split_module._data_key(datamodule, "test") == key
    copies[2].write_bytes(files[5].read_bytes() + b"\0")  # a file of the split rewritten
    assert split_module._data_key(datamodule, "test") != key
    key = split_module._data_key(datamodule, "test")
    copies[0].write_bytes(b"changed")  # not in the split (indices 1 … 4)
    assert split_module._data_key(datamodule, "test") == key
