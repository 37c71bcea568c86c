"""Unseen-class splits (data.split_by=class), query/gallery tests, splits.json, per-class and clustering metrics."""

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from simlearn.config import compose_config
from simlearn.data import DigitsDataModule, PairsCSVDataModule
from simlearn.data.base import EmbeddingDataModule, Items
from simlearn.data.in_memory import ImageTensors
from simlearn.data.splits import class_split, split_class_count
from simlearn.errors import UserError
from simlearn.eval import evaluate
from simlearn.evaluation import RetrievalEvaluator, retrieval_metrics
from simlearn.evaluation.clustering import clustering_metrics, kmeans_labels
from simlearn.evaluation.retrieval import per_class_metrics
from simlearn.inference.embedding_files import embed_splits

from .helpers import run_training
from .photos import class_folders, distinct_pairs, write_csv

DIGITS = dict(label_field="digit", image_size=8, channels=1, num_classes=None, seed=0, val_fraction=0.2,
              test_fraction=0.25)  # fmt: skip


def digits(**overrides) -> DigitsDataModule:
    datamodule = DigitsDataModule(**{**DIGITS, **overrides})
    datamodule.setup()
    return datamodule


def split_classes(datamodule: EmbeddingDataModule) -> dict[str, set[str]]:
    return {
        split: {datamodule.label_names[c] for c in dataset.labels(datamodule.label_field).unique().tolist()}
        for split, dataset in datamodule.datasets.items()
    }


def test_item_split_is_unchanged_and_closed_set():
    item = digits()
    assert item.split_by == "item" and item.num_train_classes == 10
    classes = split_classes(item)
    assert classes["train"] == classes["val"] == classes["test"] == {str(d) for d in range(10)}
    assert [len(item.datasets[s]) for s in ("train", "val", "test")] == [988, 359, 450]  # the README's figures


def test_seeded_class_split_gives_disjoint_classes_and_train_labels_first():
    datamodule = digits(split_by="class")
    classes = split_classes(datamodule)
    assert not (classes["train"] & classes["val"]) and not (classes["train"] & classes["test"])
    assert not (classes["val"] & classes["test"])
    assert len(classes["test"]) == split_class_count(10, 0.25) == 2
    assert len(classes["val"]) == split_class_count(8, 0.2) == 2
    # every item of a class is in its class's split
    sizes = {s: len(d) for s, d in datamodule.datasets.items()}
    assert sum(sizes.values()) == 1797
    # labels 0..T-1 are the training classes: what classifier losses are sized for
    train_labels = datamodule.datasets["train"].labels("digit")
    assert sorted(train_labels.unique().tolist()) == list(range(datamodule.num_train_classes)) == list(range(6))
    assert datamodule.datasets["test"].labels("digit").min() >= 8
    # the same seed gives the same classes, another seed others
    assert split_classes(digits(split_by="class")) == classes
    assert any(split_classes(digits(split_by="class", seed=s)) != classes for s in (1, 2, 3))


def test_explicit_class_lists_train_on_some_digits_and_test_on_the_others():
    datamodule = digits(split_by="class", train_classes=[0, 1, 2, 3, 4], val_classes=[5, 6], test_classes=[7, 8, 9])
    assert split_classes(datamodule) == {"train": set("01234"), "val": set("56"), "test": set("789")}
    assert datamodule.class_names == list("0123456789") and datamodule.num_train_classes == 5
    # without val classes, val is drawn from the free training classes only: listed ones stay
    no_val = digits(split_by="class", train_classes=[0, 1, 2, 3, 4], test_classes=[5, 6, 7, 8, 9])
    assert split_classes(no_val)["train"] == set("01234") and len(no_val.datasets["val"]) == 0
    # a train list is the whole training set: the unlisted classes are unseen (test; val when test is listed)
    only_train = split_classes(digits(split_by="class", train_classes=[0, 1, 2, 3, 4]))
    assert only_train["train"] == set("01234") and only_train["test"] == set("56789")
    with_test = split_classes(digits(split_by="class", train_classes=[0, 1, 2, 3], test_classes=[8, 9]))
    assert with_test == {"train": set("0123"), "val": set("4567"), "test": set("89")}
    with pytest.raises(UserError, match="data.train_classes is an empty list"):
        digits(split_by="class", train_classes=[])
    partial = digits(split_by="class", test_classes=[5, 6, 7, 8, 9])  # the others: 2 to val, 3 to train
    classes = split_classes(partial)
    assert classes["test"] == set("56789") and len(classes["val"]) == 2 and len(classes["train"]) == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(train_classes=[0, 1]), "needs data.split_by=class"),
        (dict(split_by="class", train_classes=[0, 1, 2], test_classes=[2, 3]), "listed for two splits"),
        (dict(split_by="class", test_classes=[11]), "does not have"),
        (dict(split_by="class", classes=[0, 1, 2, 3], test_classes=[7, 8]), "not in data.classes"),
        (dict(split_by="classes"), "data.split_by must be one of item, class"),
        (dict(split_by="class", num_classes=10), "data.num_classes=10 but data 'digits' trains on 6 classes"),
        # a split left with one class names what gives a class split its classes, not data.classes / max_<split>
        (dict(split_by="class", test_classes=[9]), r"test split .* 1 class\(es\) \['9'\].*data.test_classes"),
        (dict(split_by="class", test_fraction=0.0), r"test split .* 0 class\(es\).*or raise data.test_fraction"),
        (dict(split_by="class", train_classes=[0], test_classes=list(range(1, 10))), r"data.train_classes"),
    ],
)
def test_bad_class_split_configs_get_one_line(overrides, message):
    with pytest.raises(UserError, match=message) as error:
        digits(**overrides)
    assert "\n" not in str(error.value)


def test_class_split_rule():
    names = [f"c{i}" for i in range(10)]
    official = {**{n: "train" for n in names[:5]}, **{n: "test" for n in names[5:]}}
    roles = class_split(names, official, {}, val_fraction=0.2, test_fraction=0.25, seed=0)
    # an official train/test split keeps its test classes and takes val from its training classes
    assert set(roles["test"]) == set(names[5:]) and len(roles["val"]) == 2 and set(roles["val"]) < set(names[:5])
    assert split_class_count(3, 0.34) == 0 and split_class_count(5, 0.2) == 2 and split_class_count(10, 0.5) == 5


class QueryGalleryModule(EmbeddingDataModule):
    """In-memory items with a fixed train / query / gallery split, as In-Shop fixes it."""

    name = "qg"

    def __init__(self, split, labels, **kwargs):
        super().__init__(image_size=4, channels=1, **kwargs)
        self._split_list, self._labels = split, labels

    def load(self) -> Items:
        n = len(self._labels)
        images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (n, 1, 4, 4), dtype=np.uint8))
        return ImageTensors(images=images, fields={"label": torch.tensor(self._labels)}, split=self._split_list)


def test_query_gallery_items_make_the_test_split_and_are_searched_against_each_other():
    labels = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5, 5, 5]
    split = ["train"] * 4 + [None] * 4 + ["query", "gallery", "gallery", "query", "gallery", "gallery"]
    datamodule = QueryGalleryModule(split, labels, split_by="class", val_fraction=0.0, test_fraction=0.0)
    datamodule.setup()
    assert datamodule.test_protocol == "query-gallery"
    test = datamodule.datasets["test"]
    role = test.labels("is_gallery")
    assert role.tolist() == [0, 0, 1, 1, 1, 1]  # queries first
    summary = datamodule.split_summary()
    assert summary["splits"]["test"]["num_queries"] == 2 and summary["splits"]["test"]["num_gallery"] == 4
    assert summary["test_protocol"] == "query-gallery" and summary["closed_set"] is False
    # the evaluator searches the queries against the gallery only, not each other
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.9, 0.1], [1.0, 0.0], [0.1, 0.9]])
    fields = {"label": test.labels("label"), "is_gallery": role}
    metrics = RetrievalEvaluator("label", ks=[1])(embeddings, fields, "val")
    query, gallery = role == 0, role == 1
    expected = retrieval_metrics(
        embeddings[query], fields["label"][query], [1], embeddings[gallery], fields["label"][gallery]
    )
    assert metrics["recall@1"] == expected["recall@1"] and metrics["num_gallery"] == 4 and metrics["num_queries"] == 2
    assert RetrievalEvaluator.protocol(fields) == "query-gallery"


def test_queries_without_a_gallery_item_of_their_class_are_refused():
    labels = [0, 0, 1, 1, 2, 2, 3, 3]
    split = ["train"] * 4 + ["query", "gallery", "query", "gallery"]
    labels[6] = 4  # a query of class 4, which has no gallery item
    with pytest.raises(UserError, match="1 of 2 queries have no gallery item of their class"):
        QueryGalleryModule(split, labels, test_fraction=0.0, val_fraction=0.0).setup()
    with pytest.raises(UserError, match="fixes query items but no gallery items"):
        QueryGalleryModule(["train"] * 4 + ["query"] * 4, [0, 0, 1, 1, 2, 2, 3, 3], test_fraction=0.0).setup()


def test_per_class_metrics_average_to_the_overall_ones():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 300)
    x = rng.normal(size=(300, 8)) + 2 * np.eye(8)[labels]
    overall = retrieval_metrics(x, labels, [1])
    rows = per_class_metrics(x, labels)
    assert [r["label"] for r in rows] == list(range(6))
    n = sum(r["num_queries"] for r in rows)
    assert n == overall["num_queries"]
    for key in ("recall@1", "map@r"):
        assert sum(r[key] * r["num_queries"] for r in rows) / n == pytest.approx(overall[key], abs=1e-12)
    assert len({round(r["map@r"], 6) for r in rows}) > 1  # really per class


def test_clustering_metrics_follow_sklearn_definitions():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), 40)
    separated = np.eye(5)[labels] * 10 + rng.normal(size=(200, 5)) * 0.1
    metrics = clustering_metrics(separated.astype(np.float32), labels)
    # one k-means start (faiss' default, as in PML) may split a class and merge two: NMI 0.865 here, else 1.0
    assert metrics["nmi"] > 0.8 and metrics["ami"] > 0.8
    noise = rng.normal(size=(200, 5)).astype(np.float32)
    clusters = kmeans_labels(noise, 5)
    metrics = clustering_metrics(noise, labels)
    assert metrics["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters))
    assert metrics["ami"] == pytest.approx(adjusted_mutual_info_score(labels, clusters))
    assert metrics["nmi"] < 0.2


@pytest.fixture(scope="module")
def unseen_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("unseen") / "run"
    metrics = run_training(
        out,
        "data.split_by=class",
        # val and test classes out of the source's order: their training labels (train, val, then test classes:
        # 5, 6 for 8, 9 and 7, 8, 9 for 5, 6, 7) differ from the digits, which the files must carry
        "data.train_classes=[0,1,2,3,4]",
        "data.val_classes=[8,9]",
        "data.test_classes=[5,6,7]",
        "trainer.max_epochs=3",
        "reports.plots=null",
    )
    return out, metrics


def test_an_unseen_class_run_writes_its_splits_per_class_metrics_and_clustering(unseen_run):
    out, metrics = unseen_run
    splits = json.loads((out / "splits.json").read_text())
    assert splits["split_by"] == "class" and splits["closed_set"] is False
    assert splits["splits"]["train"]["classes"] == list("01234")
    assert splits["splits"]["test"]["classes"] == list("567")
    assert sum(splits["splits"]["test"]["items_per_class"].values()) == splits["splits"]["test"]["num_items"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test/protocol"] == "leave-one-out"
    assert 0 < saved["test/nmi"] <= 1 and "test/ami" in saved and "val/nmi" not in saved
    # the classifier was sized for the 5 training classes; its accuracy on unseen classes is not reported
    config = (out / "config.yaml").read_text()
    assert "num_classes: 5" in config and "test/accuracy_digit" not in saved
    with (out / "per_class.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["class"] for r in rows) == list("567")
    assert all(int(r["label"]) == int(r["class"]) for r in rows)  # the digit's own code, as in embeddings.npz
    # embeddings.npz holds the dataset's values: every test item's digit is its magnitude (its value) and its class
    # name (class_names[labels]) a test class of splits.json
    saved_npz = np.load(out / "embeddings.npz")
    assert (saved_npz["digit"] == saved_npz["magnitude"]).all() and (saved_npz["labels"] == saved_npz["digit"]).all()
    assert set(saved_npz["class_names"][saved_npz["labels"]].tolist()) == set(splits["splits"]["test"]["classes"])
    assert (saved_npz["parity"] == saved_npz["magnitude"] % 2).all()
    weighted = sum(float(r["map@r"]) * int(r["num_queries"]) for r in rows) / sum(int(r["num_queries"]) for r in rows)
    assert weighted == pytest.approx(saved["test/map@r"], abs=1e-5)
    assert metrics["test/recall@1"] == saved["test/recall@1"]


def test_a_class_split_checkpoint_evaluates_on_other_splits_of_the_data(unseen_run, tmp_path):
    # its classifier has the 5 training classes; evaluated on every digit (closed set) or another class split it
    # tests the embeddings and leaves the classes it never had unscored, instead of refusing the data
    out, _ = unseen_run
    best = next((out / "checkpoints").glob("best-epoch*.ckpt"))
    for name, overrides in {"all": ["data=digits"], "other": ["data=digits", "data.split_by=class"]}.items():
        cfg = compose_config(
            [f"ckpt_path={best}", "trainer.accelerator=cpu", *overrides],
            config_name="eval",
            output_dir=tmp_path / name,
        )
        metrics = evaluate(cfg)
        assert 0 < metrics["test/recall@1"] <= 1 and "test/accuracy_digit" not in metrics
    assert json.loads((tmp_path / "all" / "splits.json").read_text())["splits"]["test"]["num_classes"] == 10


def test_closed_set_runs_write_splits_json_too(trained_run):
    splits = json.loads((trained_run / "splits.json").read_text())
    assert splits["split_by"] == "item" and splits["closed_set"] is True
    assert [splits["splits"][s]["num_items"] for s in ("train", "val", "test")] == [988, 359, 450]


def test_class_split_on_pairs_is_refused(tmp_path):
    files = class_folders(tmp_path / "photos", {"cat": 6, "dog": 6})
    rows = [[str(a.relative_to(tmp_path)), str(b.relative_to(tmp_path)), s] for a, b, s in distinct_pairs(files, 10)]
    csv_path = write_csv(tmp_path / "pairs.csv", ["path_a", "path_b", "similar"], rows)
    with pytest.raises(UserError, match="holds pairs, not classes, so it cannot be split by class"):
        PairsCSVDataModule(csv=csv_path, image_size=16, split_by="class").setup()


def test_probe_classes_stay_out_of_a_class_split():
    datamodule = digits(split_by="class", probe_classes=[9], train_classes=[0, 1, 2, 3], test_classes=[5, 6])
    classes = split_classes(datamodule)
    assert classes.pop("probe") == {"9"} and datamodule.probe_class_names == ["9"]
    assert "9" not in set().union(*classes.values())
    assert classes["test"] == set("56") and set("0123") <= classes["train"]
    assert datamodule.datasets["probe"].labels("digit").unique().tolist() == [len(datamodule.class_names)]


def test_embedding_skips_a_split_left_empty():
    # listing every training class leaves val empty; simlearn-embed must embed the other splits, not crash
    datamodule = digits(split_by="class", train_classes=[0, 1, 2, 3, 4], test_classes=[5, 6, 7, 8, 9])
    assert len(datamodule.datasets["val"]) == 0
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    results = embed_splits(encoder, datamodule)
    assert list(results) == ["train", "test"]
    assert results["test"].embeddings.shape == (len(datamodule.datasets["test"]), 4)
    with pytest.raises(UserError, match=r"splits=\['val'\] hold no items.*\['train', 'test'\]"):
        embed_splits(encoder, datamodule, ["val"])


def test_clustering_metrics_equal_pytorch_metric_learnings():
    # PML clusters through faiss (a dependency of simlearn), as clustering_metrics does when faiss is installed
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 12, 3000)
    x = (rng.normal(size=(3000, 16)) + 1.5 * np.eye(16)[labels]).astype(np.float32)
    calculator = AccuracyCalculator(include=("NMI", "AMI"), device=torch.device("cpu"))
    pml = calculator.get_accuracy(torch.from_numpy(x), torch.from_numpy(labels))
    ours = clustering_metrics(x, labels)
    assert ours["nmi"] == pytest.approx(pml["NMI"], abs=1e-9) and ours["ami"] == pytest.approx(pml["AMI"], abs=1e-9)


QG_LABELS = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5, 5, 5]
QG_SPLIT = ["train"] * 4 + [None] * 4 + ["query", "gallery", "gallery", "query", "gallery", "gallery"]


def test_a_class_with_query_gallery_and_training_items_is_refused_by_a_class_split():
    # class 1: two training items and a query/gallery pair; a class split would train on it and test on it
    labels, split = (
        [0, 0, 1, 1, 1, 1, 2, 2],
        ["train", "train", "train", "train", "query", "gallery", "query", "gallery"],
    )
    with pytest.raises(UserError, match=r"class '1' has query/gallery items and items of \['train'\]") as error:
        QueryGalleryModule(split, labels, split_by="class", val_fraction=0.0, test_fraction=0.0).setup()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "overrides, given_by",
    [
        (dict(split_by="item", test_fraction=0.5), "data.test_fraction"),
        (dict(split_by="class", test_classes=[2]), "data.test_classes"),
    ],
)
def test_test_items_beside_the_query_gallery_ones_are_not_dropped_silently(overrides, given_by):
    module = QueryGalleryModule(QG_SPLIT, QG_LABELS, **{"val_fraction": 0.0, "test_fraction": 0.0, **overrides})
    with pytest.raises(UserError, match=f"{given_by} also gives .* other items to test"):
        module.setup()


@pytest.mark.parametrize("split_by", ["item", "class"])
def test_num_train_classes_counts_the_training_labels_even_when_max_train_drops_a_class(split_by):
    # labels 0..T-1 are the training classes; a classifier must have T outputs even when data.max_train leaves some
    # of them without items, or the labels above them overflow it
    datamodule = digits(split_by=split_by, max_train=4)
    train_labels = datamodule.datasets["train"].labels("digit")
    expected = 10 if split_by == "item" else 6
    assert len(train_labels.unique()) < expected and datamodule.num_train_classes == expected
    assert int(train_labels.max()) < datamodule.num_train_classes
    assert digits(split_by=split_by, max_train=4, num_classes=expected).num_train_classes == expected


def test_a_class_split_that_leaves_a_class_with_one_item_is_refused():
    labels = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4]  # class 4 has a single item
    module = QueryGalleryModule([None] * len(labels), labels, split_by="class", train_classes=[0, 1, 2],
                                test_classes=[3, 4])  # fmt: skip
    with pytest.raises(UserError, match=r"1 class\(es\) with a single item in test \(\['4'\]\)") as error:
        module.setup()
    assert "\n" not in str(error.value)
    ok = QueryGalleryModule(
        [None] * len(labels), labels, split_by="class", train_classes=[0, 1, 4], test_classes=[2, 3]
    )
    ok.setup()  # the single item trains
    assert sorted(ok.split_summary()["splits"]["test"]["classes"]) == ["2", "3"]
