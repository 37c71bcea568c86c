"""Image-file data (image_folder, image_csv): seeded disjoint splits, class selection, augment configs, bad files."""

import logging

import pytest
import torch
from hydra.utils import instantiate
from torchvision.transforms import v2

from simlearn.config import compose_config
from simlearn.data import ImageCSVDataModule, ImageFolderDataModule
from simlearn.errors import UserError

from .photos import class_folders, write_csv

COUNTS = {"cat": 10, "dog": 12, "owl": 8}


def folder(root, **overrides) -> ImageFolderDataModule:
    kwargs = dict(root=root, image_size=16, num_classes=3, num_workers=0, seed=0, batch_size=4, eval_batch_size=8)
    datamodule = ImageFolderDataModule(**{**kwargs, **overrides})
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def paths_of(datamodule, split):
    dataset = datamodule.datasets[split]
    return [dataset.paths[i] for i in dataset.indices.tolist()]


@pytest.fixture
def photos(tmp_path):
    files = class_folders(tmp_path / "photos", COUNTS)
    return tmp_path / "photos", files


def test_folder_splits_are_disjoint_stratified_and_depend_on_the_seed_only(photos):
    root, files = photos
    a, b, c = folder(root, seed=1), folder(root, seed=1), folder(root, seed=2)
    split_paths = {split: set(paths_of(a, split)) for split in ("train", "val", "test")}
    assert not split_paths["train"] & split_paths["val"] and not split_paths["train"] & split_paths["test"]
    assert not split_paths["val"] & split_paths["test"]
    assert set.union(*split_paths.values()) == {str(p) for paths in files.values() for p in paths}
    for split, fraction in (("val", 0.1), ("test", 0.2)):
        counts = torch.bincount(a.datasets[split].labels("label"), minlength=3).tolist()
        assert counts == [round(COUNTS[name] * fraction) for name in a.class_names]
    for split in ("train", "val", "test"):
        assert paths_of(a, split) == paths_of(b, split)
    assert paths_of(a, "test") != paths_of(c, "test")


def test_class_selection_orders_the_labels_and_probe_classes_stay_out(photos):
    root, files = photos
    datamodule = folder(root, classes=["owl", "cat"], num_classes=2, probe_classes=["dog"])
    assert datamodule.class_names == ["owl", "cat"] and datamodule.probe_class_names == ["dog"]
    train = datamodule.datasets["train"]
    for path, label in zip(paths_of(datamodule, "train"), train.labels("label").tolist(), strict=True):
        assert f"/{['owl', 'cat'][label]}/" in path
    probe = set(paths_of(datamodule, "probe"))
    assert probe == {str(p) for p in files["dog"]}
    assert all(not probe & set(paths_of(datamodule, split)) for split in ("train", "val", "test"))
    batch = next(iter(datamodule.probe_dataloader()))
    assert set(batch["label"].tolist()) == {2}  # probe labels follow the trained ones


def test_batches_are_normalised_tensors_of_the_configured_size(photos):
    root, _ = photos
    datamodule = folder(root, num_workers=1)
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"image", "index", "label"}
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    test = next(iter(datamodule.test_dataloader()))
    assert test["image"].shape[1:] == (3, 16, 16) and test["index"].tolist() == sorted(test["index"].tolist())
    grey = folder(root, channels=1)
    assert next(iter(grey.val_dataloader()))["image"].shape[1:] == (1, 16, 16)


def test_unreadable_files_are_skipped_with_a_counted_warning(photos, caplog):
    root, files = photos
    (root / "cat" / "broken.jpg").write_bytes(b"not an image at all")
    truncated = files["dog"][0]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])  # header fine, pixel data cut off
    with caplog.at_level(logging.WARNING):
        datamodule = folder(root, eval_batch_size=64)
    assert "skipped 1 of 31 image files" in caplog.text and "broken.jpg" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        batches = [b for split in ("train", "val", "test") for b in datamodule.loader(split)]
    assert sum(len(b["index"]) for b in batches) == 29  # 30 readable headers, one file cut off
    assert "skipping unreadable image file" in caplog.text and truncated.name in caplog.text


def test_csv_lists_files_with_optional_fixed_splits(photos, tmp_path):
    root, files = photos
    rows = [[str(p.relative_to(root)), name, ""] for name, paths in files.items() for p in paths]
    rows[0][2] = "test"  # the first cat always goes to test
    csv_path = write_csv(root / "list.csv", ["path", "label", "split"], rows)
    kwargs = dict(csv=csv_path, image_size=16, num_classes=3, num_workers=0, seed=5)
    a, b = ImageCSVDataModule(**kwargs), ImageCSVDataModule(**kwargs)
    a.setup(), b.setup()
    assert a.class_names == ["cat", "dog", "owl"]
    assert str(files["cat"][0]) in paths_of(a, "test")
    for split in ("train", "val", "test"):
        assert paths_of(a, split) == paths_of(b, split)
    together = [p for split in ("train", "val", "test") for p in paths_of(a, split)]
    assert len(together) == len(set(together)) == len(rows)
    bad = write_csv(tmp_path / "bad.csv", ["file", "label"], [["a.jpg", "cat"]])
    with pytest.raises(UserError, match=r"lacks the columns \['path'\]"):
        ImageCSVDataModule(**{**kwargs, "csv": bad}).setup()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"root": "/nonexistent/photos"}, "is not a folder"),
        ({"classes": ["cat", "emu"], "num_classes": 2}, r"no folder for the classes \['emu'\]"),
        ({"num_classes": 5}, "set data.num_classes=3"),
        ({"classes": ["cat", "dog"], "num_classes": 2, "probe_classes": ["dog"]}, "never be trained on"),
    ],
)
def test_folder_mistakes_are_explained(photos, overrides, message):
    root, _ = photos
    with pytest.raises(UserError, match=message):
        folder(**{"root": root, **overrides})


@pytest.mark.parametrize(
    "augment,kinds", [("none", []), ("light", ["RandomResizedCrop"]), ("strong", ["GaussianNoise"])]
)
def test_augment_group_composes_into_the_image_data_configs(tmp_path, photos, augment, kinds):
    root, _ = photos
    cfg = compose_config(
        ["data=image_folder", f"augment={augment}", f"data.root={root}", "data.image_size=16", "data.num_classes=3"],
        output_dir=tmp_path,
    )
    datamodule = instantiate(cfg.data, num_workers=0)
    names = [type(t).__name__ for t in datamodule.augment]
    assert all(kind in names for kind in kinds) and (names == [] if augment == "none" else names)
    datamodule.setup()
    transform = datamodule.datasets["train"].transform
    assert isinstance(transform, v2.Compose)
    assert next(iter(datamodule.train_dataloader()))["image"].shape[1:] == (3, 16, 16)
