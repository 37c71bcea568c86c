"""simlearn-embed's library side (simlearn/inference/embedding_files.py): every split to npz and parquet, the same
embeddings as the run's, image files of another dataset with their paths."""

from __future__ import annotations

import numpy as np
import pytest

from simlearn.config import compose_config
from simlearn.inference.embedding_files import embed_dataset
from simlearn.inference.search import search

from .helpers import folder_search_config


def test_embed_writes_every_split_to_npz_and_parquet(checkpoint_folders, tmp_path):
    cfg = compose_config(
        [f"ckpt_path={checkpoint_folders['ckpt']}", "device=cpu"], config_name="embed", output_dir=tmp_path
    )
    paths = embed_dataset(cfg)
    assert sorted(paths) == ["parquet", "test", "train", "val"]
    test = np.load(paths["test"])
    assert {"embeddings", "labels", "index", "digit", "parity", "magnitude", "class_names"} <= set(test.files)
    assert test["class_names"].tolist() == [str(d) for d in range(10)]
    # the same embeddings as the training run's test split (the same checkpoint)
    run = np.load(checkpoint_folders["run"] / "embeddings.npz")
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


def test_data_of_other_channels_than_the_model_reads_is_one_line_before_embedding(checkpoint_folders, tmp_path):
    from simlearn.errors import UserError

    overrides = [
        f"ckpt_path={checkpoint_folders['ckpt']}",
        "data=image_folder",
        f"data.root={checkpoint_folders['gallery']}",
        "data.channels=3",  # the digits model reads grey images
        "data.image_size=8",
        "data.num_workers=0",
        "parquet=false",
    ]
    with pytest.raises(UserError, match=r"data.channels=3 but the model of ckpt_path=.* reads grey \(1 channel\)"):
        embed_dataset(compose_config(overrides, config_name="embed", output_dir=tmp_path))
    assert not list(tmp_path.glob("*.npz"))


def test_embed_image_files_of_another_dataset_keeps_their_paths(checkpoint_folders, tmp_path):
    """Any data with images will do (its label field need not match the checkpoint's loss); file data keeps paths,
    which a search of the npz then shows."""
    overrides = [
        f"ckpt_path={checkpoint_folders['ckpt']}",
        "data=image_folder",
        f"data.root={checkpoint_folders['gallery']}",
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
    results = search(folder_search_config(checkpoint_folders, tmp_path / "search", f"gallery={paths['train']}", "k=3"))
    assert all(item["path"].endswith(".png") for r in results for item in r["results"])
