"""Leaks between splits and silent gaps in them: duplicate and contradictory CSV rows (image_csv, pairs_csv), pairs
that share an image across splits, classes too small to reach val/test, and the hint for an empty image folder."""

import logging

import pytest
import torch

from simlearn.data import ImageCSVDataModule, ImageFolderDataModule, PairsCSVDataModule
from simlearn.data.in_memory import ImageTensors, InMemoryImageDataModule
from simlearn.errors import UserError

from .helpers import run_cli
from .photos import class_folders, distinct_pairs, write_csv
from .test_errors import assert_clean_failure

SPLITS = ("train", "val", "test")
COUNTS = {"cat": 10, "dog": 12, "owl": 8}


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    return root, class_folders(root, COUNTS)


def split_paths(datamodule) -> dict[str, list[str]]:
    """The file paths of each split (pairs: both images of each pair)."""
    out = {}
    for split in SPLITS:
        dataset = datamodule.datasets[split]
        tables = dataset.paths if isinstance(dataset.paths, tuple) else (dataset.paths,)
        out[split] = [table[i] for i in dataset.indices.tolist() for table in tables]
    return out


def assert_disjoint(paths: dict[str, list[str]]) -> None:
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1 :]:
            shared = set(paths[first]) & set(paths[second])
            assert not shared, f"{len(shared)} files in both {first} and {second}: {sorted(shared)[:3]}"


def csv_data(csv_path, **overrides) -> ImageCSVDataModule:
    kwargs = dict(csv=csv_path, image_size=16, num_classes=3, num_workers=0, seed=0)
    datamodule = ImageCSVDataModule(**{**kwargs, **overrides})
    datamodule.setup("fit")
    return datamodule


def listing(root, files) -> list[list[str]]:
    """One ``[path, label]`` row per file, paths relative to ``root``."""
    return [[str(p.relative_to(root)), name] for name, paths in files.items() for p in paths]


# -- 1. image_csv: a file is in one split only ---------------------------------------------------------------------
def test_csv_repeated_rows_without_split_column_never_land_in_two_splits(photos, caplog):
    root, files = photos
    rows = listing(root, files)
    csv_path = write_csv(root / "list.csv", ["path", "label"], rows + rows)  # the whole list twice
    with caplog.at_level(logging.WARNING):
        datamodule = csv_data(csv_path)
    paths = split_paths(datamodule)
    assert_disjoint(paths)
    assert sum(len(p) for p in paths.values()) == len(rows)
    assert caplog.text.count("duplicate rows") == 1 and f"{len(rows)} duplicate rows" in caplog.text


def test_csv_exact_repeats_are_dropped_with_one_counted_warning(photos, caplog):
    root, files = photos
    rows = [[*row, ""] for row in listing(root, files)]
    rows[0][2] = "test"
    repeats = [["./" + rows[0][0], rows[0][1], "test"], rows[1], rows[2]]  # "./cat/000.jpg" is "cat/000.jpg"
    csv_path = write_csv(root / "list.csv", ["path", "label", "split"], rows + repeats)
    with caplog.at_level(logging.WARNING):
        datamodule = csv_data(csv_path)
    paths = split_paths(datamodule)
    assert_disjoint(paths)
    assert sum(len(p) for p in paths.values()) == len(rows)
    assert "3 duplicate rows (same path, label and split) ignored" in caplog.text
    assert caplog.text.count("duplicate rows") == 1


@pytest.mark.parametrize(
    "second,message",
    [
        (["./cat/000.jpg", "cat", "test"], r"cat/000\.jpg.* split 'train' \(line 2\) and 'test' \(line 32\)"),
        (["cat/000.jpg", "cat", ""], r"cat/000\.jpg.* split 'train' \(line 2\) and no split \(line 32\)"),
        (["cat//000.jpg", "dog", "train"], r"cat/000\.jpg.* label 'cat' \(line 2\) and 'dog' \(line 32\)"),
    ],
    ids=["two-splits", "fixed-and-seeded", "two-labels"],
)
def test_csv_contradictions_are_refused_with_the_file_and_rows(photos, second, message):
    root, files = photos
    rows = [[*row, ""] for row in listing(root, files)]
    rows[0][2] = "train"
    csv_path = write_csv(root / "list.csv", ["path", "label", "split"], [*rows, second])
    with pytest.raises(UserError, match=message) as error:
        csv_data(csv_path)
    assert "\n" not in str(error.value) and "keep one" in str(error.value).lower()


# -- 2. pairs_csv: a pair is in one split only ---------------------------------------------------------------------
@pytest.fixture
def pair_rows(tmp_path):
    """60 pairs of photos of 4 colours (similar = same colour), paths relative to tmp_path."""
    files = class_folders(tmp_path / "photos", {"a": 8, "b": 8, "c": 8, "d": 8})
    rows = [[str(a.relative_to(tmp_path)), str(b.relative_to(tmp_path)), s] for a, b, s in distinct_pairs(files, 60)]
    return tmp_path, files, rows


def pairs_data(csv_path, **overrides) -> PairsCSVDataModule:
    kwargs = dict(csv=csv_path, image_size=16, num_workers=0, seed=0)
    datamodule = PairsCSVDataModule(**{**kwargs, **overrides})
    datamodule.setup("fit")
    return datamodule


def pair_keys(datamodule, split) -> set[frozenset[str]]:
    dataset = datamodule.datasets[split]
    return {frozenset((dataset.paths[0][i], dataset.paths[1][i])) for i in dataset.indices.tolist()}


def test_pairs_repeated_or_reversed_rows_are_dropped_with_one_counted_warning(pair_rows, caplog):
    root, _, rows = pair_rows
    repeats = [*rows[:4], [rows[4][1], rows[4][0], rows[4][2]], ["./" + rows[5][0], rows[5][1], rows[5][2]]]
    csv_path = write_csv(root / "pairs.csv", ["path_a", "path_b", "similar"], rows + repeats)
    with caplog.at_level(logging.WARNING):
        datamodule = pairs_data(csv_path)
    keys = {split: pair_keys(datamodule, split) for split in SPLITS}
    assert sum(len(datamodule.datasets[split]) for split in SPLITS) == 60
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"] and not keys["val"] & keys["test"]
    assert "6 duplicate rows (same pair in either order, same similar and split) ignored" in caplog.text
    assert caplog.text.count("duplicate rows") == 1


@pytest.mark.parametrize(
    "change,message",
    [
        ({"split": "test"}, r"split 'train' \(line 2\) and 'test' \(line 62 as \(b, a\)\)"),
        ({"similar": 0}, r"similar=1 \(line 2\) and similar=0 \(line 62 as \(b, a\)\)"),
    ],
    ids=["two-splits", "two-targets"],
)
def test_pairs_contradictions_are_refused_with_the_pair_and_rows(pair_rows, change, message):
    root, _, rows = pair_rows
    rows = [[*row, ""] for row in rows]
    rows[0][3] = "train"  # rows[0] is a similar pair
    again = [rows[0][1], rows[0][0], change.get("similar", rows[0][2]), change.get("split", "train")]
    csv_path = write_csv(root / "pairs.csv", ["path_a", "path_b", "similar", "split"], [*rows, again])
    with pytest.raises(UserError, match=message) as error:
        pairs_data(csv_path)
    assert rows[0][0] in str(error.value) and "\n" not in str(error.value)


def test_pairs_that_share_an_image_across_splits_are_counted(pair_rows, caplog):
    root, files, _ = pair_rows
    a, b = ([str(p.relative_to(root)) for p in files[name]] for name in ("a", "b"))
    rows = [
        [a[0], a[1], 1, "train"],
        [b[0], b[1], 1, "train"],
        [a[2], b[2], 0, "train"],
        [a[3], b[3], 0, "train"],
        [a[4], a[5], 1, "val"],
        [a[6], b[4], 0, "val"],
        [b[5], b[6], 1, "test"],
        [a[7], b[7], 0, "test"],
        [a[1], b[6], 0, "test"],  # a[1] is in a training pair
    ]
    csv_path = write_csv(root / "pairs.csv", ["path_a", "path_b", "similar", "split"], rows)
    with caplog.at_level(logging.WARNING):
        pairs_data(csv_path)
    assert "1 of 3 test pairs share an image with a training pair" in caplog.text
    assert "val pairs" not in caplog.text  # the val images are not in training pairs


# -- 3. classes too small to reach val/test ------------------------------------------------------------------------
def test_image_class_with_one_file_is_reported_as_trained_on_only(tmp_path, caplog):
    root = tmp_path / "photos"
    class_folders(root, {"cat": 10, "dog": 12, "owl": 1})
    with caplog.at_level(logging.WARNING):
        datamodule = ImageFolderDataModule(root=root, image_size=16, num_classes=3, num_workers=0)
        datamodule.setup("fit")
    assert datamodule.datasets["train"].labels("label").tolist().count(2) == 1  # owl is trained on …
    assert 2 not in datamodule.datasets["test"].labels("label").tolist()  # … and never evaluated
    assert "1 class has too few images to appear in val/test (need ≥ 6 for val, ≥ 3 for test)" in caplog.text
    assert "['owl']" in caplog.text and "trained on only" in caplog.text


def test_no_small_class_warning_when_every_class_reaches_val_and_test(photos, caplog):
    root, _ = photos
    with caplog.at_level(logging.WARNING):
        ImageFolderDataModule(root=root, image_size=16, num_classes=3, num_workers=0).setup("fit")
    assert "too few images" not in caplog.text


class TinyTensors(InMemoryImageDataModule):
    """In-memory data with classes of 10, 10 and 2 items."""

    name = "tiny"

    def load(self) -> ImageTensors:
        labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 2)
        images = torch.randint(0, 256, (len(labels), 1, 4, 4), dtype=torch.uint8)
        return ImageTensors(images=images, fields={"label": labels}, names={"label": ["a", "b", "c"]})


def test_in_memory_class_too_small_for_val_and_test_is_reported(caplog):
    with caplog.at_level(logging.WARNING):
        TinyTensors(label_field="label", image_size=4, channels=1, num_classes=3).setup("fit")
    assert "data 'tiny': 1 class has too few images to appear in val/test" in caplog.text
    assert "['c']" in caplog.text and caplog.text.count("too few images") == 1


# -- 4. an image folder without images -----------------------------------------------------------------------------
# images directly in the root (no class folders) are unlabelled data since issue 23 (tests/test_unlabelled.py)
@pytest.mark.parametrize("layout", ["empty", "empty-class-folders"])
def test_image_folder_without_images_says_where_images_belong(tmp_path, layout):
    root = tmp_path / "photos"
    root.mkdir()
    if layout == "empty-class-folders":
        for name in ("cat", "dog"):
            (root / name).mkdir()
            (root / name / "notes.txt").write_text("no image")
    with pytest.raises(UserError, match=r"holds no images with extensions \[.*'\.jpg'.*\] in class sub-folders") as e:
        ImageFolderDataModule(root=root, image_size=16, num_classes=2, num_workers=0).setup("fit")
    message = str(e.value)
    assert "num_classes" not in message and f"data.root={str(root)!r}" in message
    assert "<root>/<class>/<image>" in message and "point data.root at the folder that holds" in message
    if layout == "empty-class-folders":
        assert "['cat', 'dog']" in message


@pytest.mark.slow
def test_train_on_an_empty_image_folder_fails_cleanly(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli(
        "train.py", "data=image_folder", f"data.root={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert_clean_failure(result, "error:", "holds no images", "<root>/<class>/<image>")
    assert result.returncode == 2 and "num_classes=0" not in result.stderr
