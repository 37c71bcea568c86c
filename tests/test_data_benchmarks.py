"""The standard benchmarks as data sources (CUB-200-2011, Cars196, Stanford Online Products, In-Shop Clothes): tiny
trees in each dataset's exact layout (list files, headers, 1-based ids, image folders), their label fields and
official splits, bad input, and a one-epoch run on each with metrics.json."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from simlearn.data import Cars196DataModule, CUB200DataModule, InShopDataModule, SOPDataModule
from simlearn.errors import UserError

from .helpers import run_training
from .photos import PALETTE, write_photo

#: Class ids of the tiny trees: the training half's first classes and the test half's (the official rule at work).
CUB_CLASSES = [1, 2, 3, 4, 5, 6, 101, 102, 103, 200]
CARS_CLASSES = [1, 2, 3, 4, 5, 98, 99, 100, 196]
PER_CLASS = 4
SIZE = 16


def photo(path: Path, class_index: int, rng: np.random.Generator) -> None:
    write_photo(path, PALETTE[class_index % len(PALETTE)], rng, size=SIZE)


def write_cub(root: Path) -> Path:
    """``root/CUB_200_2011/`` as the archive unpacks: images.txt, image_class_labels.txt, classes.txt, images/."""
    folder = root / "CUB_200_2011"
    rng = np.random.default_rng(0)
    images, labels, classes = [], [], []
    image_id = 0
    for index, class_id in enumerate(CUB_CLASSES):
        name = f"{class_id:03d}.Bird_{class_id}"
        classes.append(f"{class_id} {name}")
        for i in range(PER_CLASS):
            image_id += 1
            relative = f"{name}/Bird_{class_id}_{i:04d}_{image_id}.jpg"
            photo(folder / "images" / relative, index, rng)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {class_id}")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    # the classification split, which metric learning does not use: half of every class "training"
    (folder / "train_test_split.txt").write_text("\n".join(f"{i} {i % 2}" for i in range(1, image_id + 1)) + "\n")
    return folder


def write_cars(root: Path, class_ids: list[int] = CARS_CLASSES) -> Path:
    """``root/`` with cars_annos.mat (struct array ``annotations``, cell array ``class_names``) and car_ims/."""
    rng = np.random.default_rng(1)
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, len(class_ids) * PER_CLASS), dtype=[(f, "O") for f in fields])
    number = 0
    for index, class_id in enumerate(class_ids):
        for i in range(PER_CLASS):
            relative = f"car_ims/{number + 1:06d}.jpg"
            photo(root / relative, index, rng)
            # MATLAB stores numbers as 1×1 arrays, as in the real file
            values = [relative, *(np.array([[v]], np.uint8) for v in (1, 1, SIZE - 1, SIZE - 1)), class_id, i % 2]
            annotations[0, number] = tuple(
                v if isinstance(v, np.ndarray | str) else np.array([[v]], np.uint8) for v in values
            )
            number += 1
    class_names = np.empty((1, 196), dtype=object)
    for i in range(196):
        class_names[0, i] = f"Maker Model{i + 1} {2000 + i % 13}"
    savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return root


SOP_CATEGORIES = {1: "bicycle", 2: "cabinet", 3: "chair"}
#: (class id, super class id) per product: products 1-6 train, 7-10 test, as the official files split them.
SOP_TRAIN = [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3)]
SOP_TEST = [(7, 1), (8, 2), (9, 3), (10, 3)]


def write_sop(root: Path) -> Path:
    """``root/Stanford_Online_Products/`` with Ebay_train.txt, Ebay_test.txt and <category>_final/ images."""
    folder = root / "Stanford_Online_Products"
    rng = np.random.default_rng(2)
    image_id = 0
    for split, products in (("train", SOP_TRAIN), ("test", SOP_TEST)):
        lines = ["image_id class_id super_class_id path"]
        for class_id, super_id in products:
            for i in range(PER_CLASS):
                image_id += 1
                relative = f"{SOP_CATEGORIES[super_id]}_final/{111085122870 + class_id}_{i}.JPG"
                photo(folder / relative, class_id, rng)
                lines.append(f"{image_id} {class_id} {super_id} {relative}")
        (folder / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


#: item number → (category, statuses of its images): 6 training items, 4 test items with 2 queries and 2 gallery.
INSHOP_ITEMS = {
    **{n: ("WOMEN/Dresses" if n % 2 else "MEN/Denim", ["train"] * PER_CLASS) for n in range(1, 7)},
    **{n: ("WOMEN/Skirts", ["query", "gallery", "query", "gallery"]) for n in range(7, 11)},
}


def write_inshop(root: Path, items: dict = INSHOP_ITEMS) -> Path:
    """``root/`` as mmpretrain expects the download: Eval/list_eval_partition.txt and Img/img/<gender>/<category>/."""
    rng = np.random.default_rng(3)
    rows = []
    for number, (category, statuses) in items.items():
        item = f"id_{number:08d}"
        for i, status in enumerate(statuses):
            name = f"img/{category}/{item}/{i + 1:02d}_{i % 4 + 1}_front.jpg"
            photo(root / "Img" / name, number, rng)
            rows.append(f"{name} {item} {status}")
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    (root / "Eval" / "list_eval_partition.txt").write_text(text)
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    """One tree per benchmark, shared by the module's tests (read-only: copy one before changing it)."""
    base = tmp_path_factory.mktemp("benchmarks")
    write_cub(base / "cub")
    write_cars(base / "cars")
    write_sop(base / "sop")
    write_inshop(base / "inshop")
    return {"cub200": base / "cub", "cars196": base / "cars", "sop": base / "sop", "inshop": base / "inshop"}


MODULES = {
    "cub200": CUB200DataModule,
    "cars196": Cars196DataModule,
    "sop": SOPDataModule,
    "inshop": InShopDataModule,
}


def source(name: str, root: Path, **overrides):
    kwargs = dict(root=root, image_size=SIZE, num_workers=0, seed=0, batch_size=4, eval_batch_size=8)
    return MODULES[name](**{**kwargs, **overrides})


def by_split(table) -> dict[str, set[str]]:
    """Split → the class names of the items the table fixes to it."""
    names = table.names["class"]
    out: dict[str, set[str]] = {}
    for code, split in zip(table.fields["class"].tolist(), table.split, strict=True):
        out.setdefault(split, set()).add(names[code])
    return out


# -- layouts, label fields, official splits ------------------------------------------------------------------------
def test_cub_reads_its_lists_and_splits_species_1_to_100_from_101_to_200(trees):
    table = source("cub200", trees["cub200"]).load()  # root = the parent of CUB_200_2011/
    assert len(table) == len(CUB_CLASSES) * PER_CLASS and all(Path(p).is_file() for p in table.paths)
    assert table.names["class"] == [f"{c:03d}.Bird_{c}" for c in CUB_CLASSES]
    splits = by_split(table)
    assert splits["train"] == {f"{c:03d}.Bird_{c}" for c in CUB_CLASSES if c <= 100}
    assert splits["test"] == {f"{c:03d}.Bird_{c}" for c in CUB_CLASSES if c > 100}
    for path, code in zip(table.paths, table.fields["class"].tolist(), strict=True):
        assert f"/CUB_200_2011/images/{table.names['class'][code]}/" in path
    same = source("cub200", trees["cub200"] / "CUB_200_2011").load()  # root = CUB_200_2011/ itself
    assert same.paths == table.paths
    assert source("cub200", trees["cub200"], official_split=False).load().split is None


def test_cars_reads_the_mat_file_and_splits_models_1_to_98_from_99_to_196(trees):
    table = source("cars196", trees["cars196"]).load()
    assert [Path(p).name for p in table.paths[:2]] == ["000001.jpg", "000002.jpg"]
    assert all(Path(p).is_file() for p in table.paths)
    # names from class_names by 1-based id; the file's `test` flag (every other image) is not the split
    assert table.names["class"] == [f"Maker Model{c} {2000 + (c - 1) % 13}" for c in CARS_CLASSES]
    splits = by_split(table)
    assert splits["train"] == {table.names["class"][i] for i, c in enumerate(CARS_CLASSES) if c <= 98}
    assert splits["test"] == {table.names["class"][i] for i, c in enumerate(CARS_CLASSES) if c >= 99}


def test_sop_reads_both_files_with_product_and_category_fields(trees):
    table = source("sop", trees["sop"]).load()
    assert len(table) == (len(SOP_TRAIN) + len(SOP_TEST)) * PER_CLASS and all(Path(p).is_file() for p in table.paths)
    assert set(table.fields) == {"class", "super_class"}
    assert table.names["super_class"] == ["bicycle", "cabinet", "chair"]
    splits = by_split(table)
    assert splits == {"train": {str(c) for c, _ in SOP_TRAIN}, "test": {str(c) for c, _ in SOP_TEST}}
    products = dict(SOP_TRAIN + SOP_TEST)
    for code, super_code in zip(table.fields["class"].tolist(), table.fields["super_class"].tolist(), strict=True):
        assert table.names["super_class"][super_code] == SOP_CATEGORIES[products[int(table.names["class"][code])]]


def test_inshop_reads_the_partition_with_train_query_gallery(trees):
    table = source("inshop", trees["inshop"]).load()
    assert all(Path(p).is_file() and "/Img/img/" in p for p in table.paths)
    assert set(table.fields) == {"class", "category"}
    assert table.names["category"] == ["MEN/Denim", "WOMEN/Dresses", "WOMEN/Skirts"]
    assert sorted(set(table.split)) == ["gallery", "query", "train"]
    items = by_split(table)
    assert items["train"] == {f"id_{n:08d}" for n in range(1, 7)}
    assert items["query"] == items["gallery"] == {f"id_{n:08d}" for n in range(7, 11)}
    assert table.split.count("query") == table.split.count("gallery") == 8


def test_images_named_by_the_lists_are_what_the_splits_hold(trees):
    """Through the base: official train/test classes stay apart, validation classes come from the training ones."""
    datamodule = source("cub200", trees["cub200"], split_by="class", val_fraction=0.34)
    datamodule.setup()
    classes = {
        split: {datamodule.label_names[c] for c in dataset.labels("class").unique().tolist()}
        for split, dataset in datamodule.datasets.items()
    }
    assert classes["test"] == {f"{c:03d}.Bird_{c}" for c in CUB_CLASSES if c > 100}
    assert len(classes["val"]) == 2 and len(classes["train"]) == 4
    assert classes["val"] | classes["train"] == {f"{c:03d}.Bird_{c}" for c in CUB_CLASSES if c <= 100}


# -- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_missing_dataset_is_one_line_naming_files_root_and_source(name, tmp_path):
    with pytest.raises(UserError) as error:
        source(name, tmp_path / "nowhere").setup()
    message = str(error.value)
    assert "\n" not in message and "not found" in message and str(tmp_path / "nowhere") in message
    assert MODULES[name].url in message and MODULES[name].lists[0][0] in message
    assert "never downloads" in message


def test_a_root_with_some_list_files_says_which_are_missing(trees, tmp_path):
    folder = tmp_path / "CUB_200_2011"
    folder.mkdir()
    shutil.copy(trees["cub200"] / "CUB_200_2011" / "images.txt", folder)
    with pytest.raises(UserError, match=r"incomplete: it has images.txt but not image_class_labels.txt"):
        source("cub200", tmp_path).setup()


def copy_tree(trees, name, tmp_path) -> Path:
    return Path(shutil.copytree(trees[name], tmp_path / name))


@pytest.mark.parametrize(
    "name,file,edit,message",
    [
        ("cub200", "CUB_200_2011/images.txt", lambda t: t.replace("3 ", "x ", 1), r"images.txt, line 3: expected"),
        ("cub200", "CUB_200_2011/image_class_labels.txt", lambda t: t + "999 1\n", r"line 41: expected an image id"),
        ("cub200", "CUB_200_2011/images.txt", lambda t: t + "1 again.jpg\n", r"line 41: expected each image id once"),
        ("sop", "Stanford_Online_Products/Ebay_test.txt", lambda t: t.replace("image_id", "id"), r"line 1: .*header"),
        ("sop", "Stanford_Online_Products/Ebay_train.txt", lambda t: t + "99 1 1\n", r"line 26: expected 4 fields"),
        ("inshop", "Eval/list_eval_partition.txt", lambda t: t.replace("gallery", "test", 1), r"evaluation_status"),
        ("inshop", "Eval/list_eval_partition.txt", lambda t: "50" + t[t.index("\n") :], r"says 50 images but 40"),
    ],
)
def test_malformed_lines_name_file_and_line(trees, tmp_path, name, file, edit, message):
    root = copy_tree(trees, name, tmp_path)
    path = root / file
    path.write_text(edit(path.read_text()))
    with pytest.raises(UserError, match=message) as error:
        source(name, root).setup()
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_damaged_mat_file_is_one_line(trees, tmp_path):
    root = copy_tree(trees, "cars196", tmp_path)
    (root / "cars_annos.mat").write_bytes(b"not a mat file")
    with pytest.raises(UserError, match="could not be read as a MATLAB file"):
        source("cars196", root).setup()
    savemat(root / "cars_annos.mat", {"annotations": np.zeros((1, 2), dtype=[("fname", "O"), ("class", "O")])})
    with pytest.raises(UserError, match=r"lack the fields \['relative_im_path'\]"):
        source("cars196", root).setup()


def test_inshop_queries_without_gallery_images_are_one_line(tmp_path):
    items = {**INSHOP_ITEMS, 11: ("WOMEN/Skirts", ["query", "query"])}
    root = write_inshop(tmp_path / "inshop", items)
    with pytest.raises(
        UserError,
        match=r"2 query images of 1 items have no gallery .*line 43 \(item id_00000011\).*official_split=false",
    ) as error:
        source("inshop", root).load()
    assert "\n" not in str(error.value)
    assert source("inshop", root, official_split=False).load().split is None


def test_missing_images_are_counted_and_skipped_and_none_at_all_is_an_error(trees, tmp_path, caplog):
    root = copy_tree(trees, "sop", tmp_path)
    folder = root / "Stanford_Online_Products"
    for path in sorted((folder / "chair_final").iterdir())[:3]:
        path.unlink()
    with caplog.at_level(logging.WARNING):
        datamodule = source("sop", root, split_by="class", val_fraction=0.0)
        datamodule.setup()
    assert "skipped 3 of 40 image files" in caplog.text
    assert sum(len(d) for d in datamodule.datasets.values()) == 37
    for category in SOP_CATEGORIES.values():
        shutil.rmtree(folder / f"{category}_final")
    with pytest.raises(UserError, match=r"none of the 40 images its lists name could be read") as error:
        source("sop", root, split_by="class", val_fraction=0.0).setup()
    assert "\n" not in str(error.value)


# -- a run on each -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODULES))
def test_one_epoch_on_each_benchmark_writes_metrics(trees, tmp_path, name):
    run_dir = tmp_path / "run"
    metrics = run_training(
        run_dir,
        f"data={name}",
        f"data.root={trees[name]}",
        "backbone=small_cnn",
        f"data.image_size={SIZE}",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.val_fraction=0.34",
        "head.out_dim=8",
        "evaluation.ks=[1,2]",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "reports.structure=null",
    )
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["test/recall@1"] == pytest.approx(metrics["test/recall@1"])
    assert 0.0 <= written["test/map@r"] <= 1.0 and written["train/epochs"] == 1.0
    splits = json.loads((run_dir / "splits.json").read_text())
    assert splits["data"] == name and splits["split_by"] == "class" and not splits["closed_set"]
    classes = {split: set(entry["classes"]) for split, entry in splits["splits"].items()}
    assert not classes["test"] & (classes["train"] | classes["val"]) and classes["val"]
    official = by_split(source(name, trees[name]).load())
    assert classes["train"] | classes["val"] == official["train"]
    if name == "inshop":
        assert written["test/protocol"] == "query-gallery" and splits["test_protocol"] == "query-gallery"
        assert classes["test"] == official["query"]
        assert written["test/num_queries"] == 8 and splits["splits"]["test"]["num_gallery"] == 8
    else:
        assert written["test/protocol"] == "leave-one-out"
        assert classes["test"] == official["test"]
        assert written["test/num_queries"] == splits["splits"]["test"]["num_items"] == len(classes["test"]) * PER_CLASS


def test_the_zero_shot_recipe_is_one_command_on_the_query_gallery_protocol(trees, tmp_path):
    """experiment=inshop_zero_shot: no training, the backbone's features (timm, random weights here: nothing is
    downloaded in tests), the queries searched among the gallery."""
    run_dir = tmp_path / "run"
    run_training(
        run_dir,
        "experiment=inshop_zero_shot",
        f"data.root={trees['inshop']}",
        "backbone.name=resnet18",
        "backbone.pretrained=false",
        "data.image_size=32",
        "data.num_workers=0",
        "trainer=cpu",
        "evaluation.ks=[1,2]",
    )
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["train/epochs"] == 0.0 and written["test/protocol"] == "query-gallery"
    assert written["test/num_queries"] == 8 and not list(run_dir.glob("checkpoints/*.ckpt"))
    embeddings = np.load(run_dir / "embeddings.npz")["embeddings"]
    assert embeddings.shape[1] == 512  # timm resnet18's features, no projection
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
