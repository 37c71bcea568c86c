"""Files that carry labels hold the dataset's own values under every split (issue 21): the training labels are the
classifier's internal indices (train classes first under a class split, the selection's order under data.classes),
which must never reach a file under the dataset's field names."""

import numpy as np
import pytest
import torch

from simlearn.data.splits import cap_query_gallery
from simlearn.errors import UserError
from simlearn.inference.embedding_files import embed_splits, split_arrays, write_parquet

from .test_class_split import QueryGalleryModule, digits


def written(datamodule) -> dict[str, dict[str, np.ndarray]]:
    """What simlearn-embed writes for each split (its npz arrays; parquet and LanceDB rows are made from them)."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    return {
        split: split_arrays(result, datamodule, split) for split, result in embed_splits(encoder, datamodule).items()
    }


@pytest.mark.parametrize(
    "overrides",
    [
        dict(split_by="class"),  # the case: test classes 5 and 6 are trained as labels 8 and 9
        dict(split_by="class", train_classes=[9, 8, 7, 6, 5], test_classes=[0, 1, 2]),
        dict(classes=[9, 3, 5, 0]),  # a selection: labelled 0..3 in the selection's order
        dict(split_by="class", probe_classes=[9], train_classes=[4, 3, 2, 1], test_classes=[5, 6]),
        dict(),  # the item split (labels and codes agree here: the check still holds)
    ],
)
def test_every_split_writes_the_digits_own_values_and_names(overrides):
    datamodule = digits(**overrides)
    summary = datamodule.split_summary()["splits"]
    for split, arrays in written(datamodule).items():
        assert (arrays["digit"] == arrays["magnitude"]).all(), split
        assert (arrays["labels"] == arrays["digit"]).all() and (arrays["parity"] == arrays["magnitude"] % 2).all()
        names = arrays["class_names"][arrays["labels"]]
        assert (names == arrays["magnitude"].astype(str)).all()
        if split in summary:
            assert set(names.tolist()) == set(summary[split]["classes"]), split
    if "probe_classes" in overrides:
        assert set(written(datamodule)["probe"]["digit"].tolist()) == {9}


def test_training_batches_keep_the_internal_labels():
    # the classifier's labels 0..T-1 are what the losses need: only the written files are mapped back
    datamodule = digits(split_by="class")
    train = datamodule.datasets["train"].labels("digit")
    assert sorted(train.unique().tolist()) == list(range(datamodule.num_train_classes))
    test = datamodule.datasets["test"]
    internal = test.labels("digit")
    assert internal.min() >= datamodule.num_train_classes  # labels after the training classes'
    mapped = datamodule.dataset_fields({"digit": internal, "magnitude": test.labels("magnitude")})
    assert (mapped["digit"] == test.labels("magnitude").numpy()).all()
    assert not (internal.numpy() == mapped["digit"]).all()  # they differ here: the mapping is not the identity
    with pytest.raises(ValueError, match="training labels"):
        datamodule.dataset_fields({"digit": torch.tensor([len(datamodule.label_names)])})


def test_parquet_rows_name_each_item_by_its_own_class(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    datamodule = digits(split_by="class")
    path = write_parquet(tmp_path / "e.parquet", written(datamodule), ckpt_path=str(tmp_path / "x.ckpt"))
    table = pq.read_table(path).to_pydict()
    assert table["class_name"] == [str(m) for m in table["magnitude"]] and table["label"] == table["digit"]


def test_max_test_caps_a_query_gallery_test_and_keeps_a_gallery_item_for_every_query():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(40), 6)  # 40 classes, 6 items each: 2 queries and 4 gallery items per class
    split = np.tile(["query", "query", "gallery", "gallery", "gallery", "gallery"], 40).tolist()
    split = ["train"] * 20 + split
    labels = np.concatenate([rng.integers(40, 44, 20), labels]).tolist()
    full = QueryGalleryModule(split, labels, split_by="class", val_fraction=0.0, test_fraction=0.0)
    full.setup()
    assert len(full.datasets["test"]) == 240
    capped = QueryGalleryModule(split, labels, split_by="class", val_fraction=0.0, test_fraction=0.0, max_test=60)
    capped.setup()
    test = capped.datasets["test"]
    role, label = test.labels("is_gallery"), test.labels("label")
    queries, gallery = int((role == 0).sum()), int((role == 1).sum())
    assert queries == 20  # the data's share of queries (1/3) of 60
    assert len(test) <= 60 + queries  # at most one extra gallery item per kept query
    assert set(label[role == 0].tolist()) <= set(label[role == 1].tolist())  # every query has something to find
    summary = capped.split_summary()["splits"]["test"]
    assert summary["num_queries"] == queries and summary["num_gallery"] == gallery
    # seeded: the same cap gives the same items
    again = QueryGalleryModule(split, labels, split_by="class", val_fraction=0.0, test_fraction=0.0, max_test=60)
    again.setup()
    assert torch.equal(again.datasets["test"].indices, test.indices)


def test_cap_query_gallery_keeps_a_gallery_item_of_each_kept_querys_class_even_beyond_its_share():
    # 10 classes, one gallery item each: a cap of 4 keeps 1 query (its share) and that query's gallery item
    query, gallery = torch.arange(0, 10), torch.arange(10, 20)
    labels = torch.cat([torch.arange(10), torch.arange(10)])
    q, g = cap_query_gallery(query, gallery, labels, 4, seed=0)
    assert len(q) == 2 and set(labels[q].tolist()) <= set(labels[g].tolist()) and len(q) + len(g) == 4
    q, g = cap_query_gallery(query, gallery, labels, None, seed=0)
    assert torch.equal(q, query) and torch.equal(g, gallery)


def test_a_label_field_named_like_an_array_of_the_written_files_is_refused_at_setup():
    # e.g. a CSV column "labels" or "class_names": embeddings.npz would hold two arrays of one name
    class Clashing(QueryGalleryModule):
        def load(self):
            items = super().load()
            items.fields["class_names"] = items.fields["label"].clone()
            return items

    module = Clashing([None] * 12, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2], test_fraction=0.25, val_fraction=0.25)
    with pytest.raises(UserError, match=r"label field\(s\) \['class_names'\].*rename them") as error:
        module.setup()
    assert "\n" not in str(error.value)
