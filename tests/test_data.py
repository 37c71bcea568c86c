"""The embedded digits data module: splits, label fields, class selection, sampler."""

import pytest
import torch

from simlearn.data import DigitsDataModule
from simlearn.errors import UserError


def digits(**overrides) -> DigitsDataModule:
    kwargs = dict(label_field="digit", image_size=8, channels=1, num_classes=10, seed=0)
    datamodule = DigitsDataModule(**{**kwargs, **overrides})
    datamodule.setup()
    return datamodule


def test_splits_are_disjoint_stratified_and_cover_everything():
    datamodule = digits(val_fraction=0.2, test_fraction=0.25)
    index = {split: set(ds.indices.tolist()) for split, ds in datamodule.datasets.items()}
    assert (
        not (index["train"] & index["val"])
        and not (index["train"] & index["test"])
        and not (index["val"] & index["test"])
    )
    assert len(index["train"] | index["val"] | index["test"]) == 1797
    for split, fraction in (("val", 0.2), ("test", 0.25)):
        counts = torch.bincount(datamodule.datasets[split].labels("digit"), minlength=10)
        totals = torch.bincount(datamodule.datasets[split].fields["digit"], minlength=10)
        assert torch.all((counts - totals * fraction).abs() <= 1), f"{split} is not stratified per class"


def test_splits_depend_on_the_seed_only():
    a, b, c = digits(seed=1), digits(seed=1), digits(seed=2)
    assert torch.equal(a.datasets["test"].indices, b.datasets["test"].indices)
    assert not torch.equal(a.datasets["test"].indices, c.datasets["test"].indices)


def test_batches_carry_normalised_images_and_every_label_field():
    datamodule = digits(batch_size=64)
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"image", "index", "digit", "parity", "magnitude"}
    assert batch["image"].shape == (64, 1, 8, 8) and batch["image"].dtype == torch.float32
    assert torch.equal(batch["parity"], batch["digit"] % 2)
    assert torch.equal(batch["magnitude"], batch["digit"])
    train = datamodule.datasets["train"]
    everything = train.__getitems__(list(range(len(train))))["image"]
    assert everything.mean().abs() < 1e-3 and (everything.std() - 1).abs() < 1e-2


def test_class_selection_orders_the_labels_and_caps():
    datamodule = digits(classes=[7, 1], num_classes=2, max_train=50)
    train = datamodule.datasets["train"]
    assert datamodule.class_names == ["7", "1"] and set(train.labels("digit").tolist()) == {0, 1}
    # only the label field is relabelled: the others keep the source's codes
    assert torch.equal(train.labels("magnitude"), torch.where(train.labels("digit") == 0, 7, 1))
    assert len(train) == 50
    # the split follows the source's classes, not the order they are selected in
    in_order = digits(classes=[1, 7], num_classes=2)
    assert torch.equal(in_order.datasets["test"].indices, datamodule.datasets["test"].indices)
    with pytest.raises(UserError, match=r"data.classes names classes \['11'\]"):
        digits(classes=[1, 11], num_classes=2)
    with pytest.raises(UserError, match=r"trains on 2 classes \['7', '1'\]; set data.num_classes=2"):
        digits(classes=[7, 1])


def test_m_per_class_sampler_puts_m_items_of_each_class_in_a_batch():
    datamodule = digits(batch_size=64, m_per_class=8)
    batch = next(iter(datamodule.train_dataloader()))
    counts = torch.bincount(batch["digit"], minlength=10)
    assert len(batch["digit"]) == 64 and set(counts[counts > 0].tolist()) == {8}


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"image_size": 28}, "holds 1×8×8 images"),
        ({"num_classes": 3}, "data.num_classes=3"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "must leave items to train on"),
        ({"batch_size": 0}, "data.batch_size must be a positive integer"),
    ],
)
def test_inconsistent_settings_are_explained(overrides, message):
    with pytest.raises(UserError, match=message):
        digits(**overrides)
