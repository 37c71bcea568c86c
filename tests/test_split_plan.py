"""The split plan (simlearn/data/split_plan.py): plain label tensors and split options in, a plan out, no data
module; and the data module's splits are that plan's."""

import hashlib
import re

import numpy as np
import pytest
import torch

from simlearn.data import DigitsDataModule
from simlearn.data.split_plan import SplitOptions, SplitPlan, plan_splits
from simlearn.data.splits import SPLITS, cap_split, class_split, stratified_split
from simlearn.errors import UserError
from simlearn.fields import GALLERY_FIELD

from .helpers import REPO

NAMES = [f"c{i}" for i in range(6)]
CODES = torch.arange(6).repeat_interleave(10)  # six classes of ten items each


def plan(codes=CODES, names=NAMES, fixed=None, **options) -> SplitPlan:
    return plan_splits(codes, names, fixed, SplitOptions(**{"val_fraction": 0.2, "test_fraction": 0.3, **options}))


def members(p: SplitPlan) -> dict[str, set[str]]:
    """The classes each split holds, by name."""
    return {s: {p.label_names[c] for c in p.labels[i].unique().tolist()} for s, i in p.indices.items()}


def test_item_split_puts_each_class_in_every_split_in_its_proportions():
    p = plan(seed=4)
    indices = [p.indices[s] for s in SPLITS]
    assert sorted(torch.cat(indices).tolist()) == list(range(60))  # every item once
    for split, share in (("train", 5), ("val", 2), ("test", 3)):
        counts = torch.bincount(CODES[p.indices[split]], minlength=6)
        assert counts.tolist() == [share] * 6  # round(10 × fraction) items of each class
    assert p.class_names == tuple(NAMES) and p.num_train_labels == 6 and torch.equal(p.labels, CODES)
    assert p.is_gallery is None and len(p.probe) == 0
    again, other = plan(seed=4), plan(seed=5)
    assert all(torch.equal(again.indices[s], p.indices[s]) for s in SPLITS)
    assert any(not torch.equal(other.indices[s], p.indices[s]) for s in SPLITS)


def test_seeded_class_split_gives_whole_classes_and_training_labels_first():
    p = plan(split_by="class", seed=1)
    roles = class_split(NAMES, {}, {}, 0.2, 0.3, seed=1)
    assert members(p) == {s: set(roles[s]) for s in SPLITS}
    assert p.class_names == tuple(roles["train"] + roles["val"] + roles["test"])
    assert p.num_train_labels == len(roles["train"])
    assert sorted(p.labels[p.indices["train"]].unique().tolist()) == list(range(p.num_train_labels))
    for split in SPLITS:  # every item of a class in its class's split
        wanted = {NAMES.index(n) for n in roles[split]}
        assert sorted(p.indices[split].tolist()) == [i for i, c in enumerate(CODES.tolist()) if c in wanted]
    # the label of an item names its class
    assert all(p.class_names[p.labels[i]] == NAMES[CODES[i]] for i in range(60))


def test_listed_class_split_keeps_the_lists_and_the_unlisted_classes_are_unseen():
    p = plan(split_by="class", split_classes={"train": ("c0", "c1", "c2"), "val": ("c3", "c4")})
    assert members(p) == {"train": {"c0", "c1", "c2"}, "val": {"c3", "c4"}, "test": {"c5"}}
    assert p.class_names == ("c0", "c1", "c2", "c3", "c4", "c5") and p.num_train_labels == 3


def test_probe_classes_are_labelled_after_the_trained_ones_and_in_no_split():
    p = plan(probe_classes=("c2",))
    assert p.class_names == ("c0", "c1", "c3", "c4", "c5") and p.probe_class_names == ("c2",)
    assert p.probe.tolist() == list(range(20, 30))
    assert p.labels[p.probe].unique().tolist() == [5]  # C = 5 trained classes: the probe is label 5
    everywhere = torch.cat([p.indices[s] for s in SPLITS]).tolist()
    assert not set(everywhere) & set(p.probe.tolist()) and len(everywhere) == 50
    # the training labels map back to the source's codes (what written files hold)
    assert p.code_of_label.tolist() == [0, 1, 3, 4, 5, 2]
    assert torch.equal(torch.from_numpy(p.code_of_label)[p.labels], CODES)


def test_selected_classes_are_relabelled_in_their_order_and_the_rest_left_out():
    p = plan(classes=("c4", "c1", "c3"))
    assert p.class_names == ("c4", "c1", "c3") and p.num_train_labels == 3
    expected = {4: 0, 1: 1, 3: 2}
    assert p.labels.tolist() == [expected.get(c, -1) for c in CODES.tolist()]
    chosen = torch.cat([p.indices[s] for s in SPLITS])
    assert sorted(CODES[chosen].unique().tolist()) == [1, 3, 4] and len(chosen) == 30
    # split by the source's codes, visited in the source's order: the selection's order does not change the split
    seeded = stratified_split(CODES, p.labels >= 0, 0.2, 0.3, seed=0)
    assert all(torch.equal(p.indices[s], seeded[s]) for s in SPLITS)
    assert p.dataset_class_names == tuple(NAMES) and p.code_of_label.tolist() == [4, 1, 3]


def test_caps_take_the_seeded_subset_of_each_split():
    full, capped = plan(seed=2), plan(seed=2, limits={"train": 7, "test": 5})
    assert torch.equal(capped.indices["train"], cap_split(full.indices["train"], 7, 2, "train"))
    assert torch.equal(capped.indices["test"], cap_split(full.indices["test"], 5, 2, "test"))
    assert torch.equal(capped.indices["val"], full.indices["val"]) and len(capped.indices["train"]) == 7


def query_gallery_items(classes: int = 30):
    """Ten training items, then per test class two queries and four gallery items (as In-Shop fixes them)."""
    codes = torch.cat([torch.arange(10) % 2, 2 + torch.arange(classes).repeat_interleave(6)])
    fixed = ["train"] * 10 + ["query", "query", "gallery", "gallery", "gallery", "gallery"] * classes
    return codes, [f"k{i}" for i in range(classes + 2)], fixed


def test_query_gallery_test_is_queries_then_gallery_with_roles_and_max_test_keeps_a_match_per_query():
    codes, names, fixed = query_gallery_items()
    p = plan(codes, names, fixed, val_fraction=0.0, test_fraction=0.0)
    test = p.indices["test"].tolist()
    queries = [i for i, s in enumerate(fixed) if s == "query"]
    gallery = [i for i, s in enumerate(fixed) if s == "gallery"]
    assert test == queries + gallery and p.indices["train"].tolist() == list(range(10))
    assert p.is_gallery.tolist() == [-1] * 10 + [0, 0, 1, 1, 1, 1] * 30
    capped = plan(codes, names, fixed, val_fraction=0.0, test_fraction=0.0, limits={"test": 30}, seed=3)
    role = capped.is_gallery[capped.indices["test"]]
    kept_queries = capped.indices["test"][role == 0]
    kept_gallery = capped.indices["test"][role == 1]
    assert len(kept_queries) == 10  # the data's share of queries (1/3) of 30
    assert (role == 0).nonzero().max() < (role == 1).nonzero().min()  # queries first
    assert set(codes[kept_queries].tolist()) <= set(codes[kept_gallery].tolist())  # each query has a match
    assert 30 <= len(capped.indices["test"]) <= 30 + len(kept_queries)
    # items dropped by the cap are no query nor gallery item
    assert int((capped.is_gallery >= 0).sum()) == len(capped.indices["test"])


def test_fixed_official_splits_are_kept_and_val_classes_come_from_the_training_ones():
    # an official split: c0..c3 train, c4 and c5 test; no val classes fixed
    fixed = ["train" if c < 4 else "test" for c in CODES.tolist()]
    by_class = plan(fixed=fixed, split_by="class", val_fraction=0.5)
    assert members(by_class)["test"] == {"c4", "c5"}
    assert members(by_class)["val"] | members(by_class)["train"] == {"c0", "c1", "c2", "c3"}
    assert len(members(by_class)["val"]) == 2
    # split by item: the fixed items keep their split, none is drawn for another
    by_item = plan(fixed=fixed)
    assert sorted(by_item.indices["test"].tolist()) == list(range(40, 60))
    assert sorted(torch.cat([by_item.indices["train"], by_item.indices["val"]]).tolist()) == list(range(40))
    # a source's fixed items beside free ones: the free ones are split seeded, the fixed stay
    partly = ["test"] * 3 + [None] * 57
    mixed = plan(fixed=partly)
    assert {0, 1, 2} <= set(mixed.indices["test"].tolist())


@pytest.mark.parametrize(
    "fixed, options, message",
    [
        (["holdout"] * 60, {}, "assigns items to the splits ['holdout']"),
        (["query"] * 60, {}, "fixes query items but no gallery items"),
        (None, {"classes": ("c1", "zz")}, "names classes ['zz']"),
        (None, {"split_by": "class", "split_classes": {"train": ("c1",), "test": ("c1",)}}, "listed for two splits"),
        (None, {"classes": ("c1", "c1")}, "lists a class twice"),
        (None, {"split_classes": {"train": ("c1",)}}, "needs data.split_by=class"),
    ],
)
def test_bad_split_options_or_data_get_one_line(fixed, options, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")) as error:
        plan(fixed=fixed, **options)
    assert "\n" not in str(error.value)


def test_usable_leaves_items_out_before_the_split_and_pairs_cannot_be_split_by_class():
    unreadable = {3, 17, 42}

    def usable(wanted: torch.Tensor) -> torch.Tensor:
        return wanted & torch.tensor([i not in unreadable for i in range(len(wanted))])

    p = plan_splits(CODES, NAMES, None, SplitOptions(), usable=usable)
    assert sorted(torch.cat([p.indices[s] for s in SPLITS]).tolist()) == sorted(set(range(60)) - unreadable)
    with pytest.raises(UserError, match="holds pairs, not classes"):
        plan_splits(CODES, NAMES, None, SplitOptions(split_by="class"), has_classes=False)


def digest(indices: dict[str, torch.Tensor], labels: torch.Tensor) -> str:
    """One hash of which items each split holds, in order, and their training labels."""
    h = hashlib.sha256()
    for split in sorted(indices):
        h.update(split.encode() + np.asarray(indices[split], dtype=np.int64).tobytes())
        h.update(np.asarray(labels[indices[split]], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


#: The digits' splits before the split became a function (commit 3713927, EmbeddingDataModule.setup), so that
#: the same seed keeps giving the same items in the same splits (and the README's figures stay true).
DIGITS_SPLITS = {"item": "e71d14a9ae00d5cd", "class": "f80eef8fdcb9e9d4"}


@pytest.mark.parametrize("split_by", ["item", "class"])
def test_the_digits_data_module_splits_as_the_plan_and_as_before(split_by):
    datamodule = DigitsDataModule(label_field="digit", image_size=8, channels=1, seed=0, val_fraction=0.2,
                                  test_fraction=0.25, split_by=split_by)  # fmt: skip
    items = datamodule.load()
    p = plan_splits(items.fields["digit"], items.names_of("digit"), items.split, datamodule.split_options())
    datamodule.setup()
    module = {s: d.indices for s, d in datamodule.datasets.items()}
    labels = datamodule.datasets["train"].fields["digit"]
    assert digest(p.indices, p.labels) == digest(module, labels) == DIGITS_SPLITS[split_by]
    assert datamodule.class_names == list(p.class_names) and datamodule.num_train_classes == p.num_train_labels
    # the labels written to files are the dataset's own, through the plan's mapping
    written = datamodule.dataset_fields({"digit": datamodule.datasets["test"].labels("digit")})["digit"]
    assert written.tolist() == items.fields["digit"][module["test"]].tolist()
    assert datamodule.dataset_class_names == list(p.dataset_class_names)


def test_the_gallery_field_is_spelled_once_for_data_and_evaluation():
    from simlearn.evaluation import evaluators

    spelled = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "simlearn").rglob("*.py"))
        if re.search(r"[\"']is_gallery[\"']", path.read_text(encoding="utf-8"))
    ]
    assert spelled == ["simlearn/fields.py"] and evaluators.GALLERY_FIELD is GALLERY_FIELD
