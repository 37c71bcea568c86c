"""The one data module base: every source gets the same features (probe classes, label fields, on_device,
augmentation, preprocessing) and declares the interface its callers use."""

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms import v2

from simlearn.config import compose_config, config_dir
from simlearn.data import (
    DigitsDataModule,
    EmbeddingDataModule,
    ImageCSVDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    PairsCSVDataModule,
)
from simlearn.demos.toy_animals import ToyAnimalsDataModule
from simlearn.errors import UserError

from .photos import class_folders, distinct_pairs, write_csv

SPLITS = ("train", "val", "test")
#: Shared keys that a data config may set to its own value.
REDEFINED = {"batch_size", "eval_batch_size", "classes", "probe_classes"}


def digits(**overrides) -> DigitsDataModule:
    kwargs = dict(label_field="digit", image_size=8, channels=1, num_classes=10, seed=0)
    datamodule = DigitsDataModule(**{**kwargs, **overrides})
    datamodule.setup()
    return datamodule


@pytest.fixture
def photos(tmp_path):
    return tmp_path, class_folders(tmp_path / "photos", {"cat": 10, "dog": 12, "owl": 8})


def test_every_source_declares_the_same_interface(photos):
    root, files = photos
    folder = ImageFolderDataModule(root=root / "photos", image_size=16, num_classes=3, num_workers=0)
    rows = [[str(a.relative_to(root)), str(b.relative_to(root)), s] for a, b, s in distinct_pairs(files, 40)]
    pairs = PairsCSVDataModule(csv=write_csv(root / "pairs.csv", ["path_a", "path_b", "similar"], rows), image_size=16)
    toy = ToyAnimalsDataModule(per_class=10, probe_per_class=4)
    for datamodule in (digits(), toy, folder, pairs):
        datamodule.setup()
        assert isinstance(datamodule, EmbeddingDataModule)
        assert set(datamodule.preprocessing()) == {"image_size", "channels", "mean", "std"}
        assert datamodule.label_names == [*datamodule.class_names, *datamodule.probe_class_names]
        for dataset in datamodule.datasets.values():
            assert set(datamodule.label_fields) == set(dataset.fields) and len(dataset.labels(datamodule.label_field))
    assert digits().datasets["test"].paths_of([0]) is None and toy.datasets["probe"].paths_of([0]) is None
    test = folder.datasets["test"]
    assert test.paths_of(test.indices[:2].tolist()) == [test.paths[i] for i in test.indices[:2]]
    dataset = pairs.datasets["train"]
    row = int(dataset.indices[0])
    assert dataset.paths_of([2 * row, 2 * row + 1]) == [dataset.paths[0][row], dataset.paths[1][row]]


def test_digits_probe_classes_are_held_out_and_served_on_device_too():
    plain, on_device = (digits(probe_classes=[3], num_classes=9, on_device=flag) for flag in (False, True))
    assert plain.class_names == ["0", "1", "2", "4", "5", "6", "7", "8", "9"] and plain.probe_class_names == ["3"]
    for split in SPLITS:
        assert 3 not in plain.datasets[split].labels("magnitude").tolist()  # magnitude keeps the digit's value
        assert set(plain.datasets[split].labels("digit").tolist()) == set(range(9))
    probe = plain.datasets["probe"]
    assert len(probe) == 183 and set(probe.labels("digit").tolist()) == {9}  # all 183 threes, labelled C = 9
    expected = next(iter(plain.probe_dataloader()))
    batch = next(iter(on_device.probe_dataloader()))
    for key in expected:
        assert torch.equal(batch[key], expected[key]), key
    assert set(batch["magnitude"].tolist()) == {3}


def test_mnist_probe_class_is_held_out_of_the_official_test_split_too(mnist_root):
    datamodule = MNISTDataModule(
        root=mnist_root,
        download=False,
        label_field="digit",
        image_size=28,
        channels=1,
        num_classes=9,
        probe_classes=[9],
        val_fraction=0.1,
        test_fraction=0.0,
        max_train=500,
        max_val=100,
        max_test=200,
    )
    datamodule.setup()
    assert all(9 not in datamodule.datasets[split].labels("magnitude").tolist() for split in SPLITS)
    probe = datamodule.datasets["probe"]
    assert len(probe) == 5949 + 1009 and bool((probe.indices >= 60000).any())  # train and test nines


def test_csv_columns_become_label_fields_and_label_field_picks_the_classes(photos):
    root, files = photos
    colour = {"cat": "red", "dog": "green", "owl": "blue"}
    sizes = {"cat": "10", "dog": "2", "owl": "7"}
    rows = [[str(p.relative_to(root)), name, colour[name], sizes[name]] for name, paths in files.items() for p in paths]
    csv_path = write_csv(root / "list.csv", ["path", "label", "colour", "size"], rows)
    kwargs = dict(csv=csv_path, image_size=16, num_classes=3, num_workers=0, batch_size=4)
    by_label = ImageCSVDataModule(**kwargs)
    by_label.setup()
    batch = next(iter(by_label.train_dataloader()))
    assert set(batch) == {"image", "index", "label", "colour", "size"}
    train = by_label.datasets["train"]
    # sizes are numbers: coded in numeric order 2 < 7 < 10, not as text ("10" < "2")
    assert {
        (by_label.class_names[c], s)
        for c, s in zip(train.labels("label").tolist(), train.labels("size").tolist(), strict=True)
    } == {
        ("cat", 2),
        ("dog", 0),
        ("owl", 1),
    }
    by_colour = ImageCSVDataModule(**{**kwargs, "label_field": "colour", "classes": ["red", "blue"], "num_classes": 2})
    by_colour.setup()
    assert by_colour.class_names == ["red", "blue"] and by_colour.label_fields == ["colour", "label", "size"]
    test = by_colour.datasets["test"]
    assert set(test.labels("colour").tolist()) == {0, 1} and set(test.labels("label").tolist()) == {
        0,
        1,
    }  # cat, owl: the rows of red and blue


def test_label_field_names_its_own_classes():
    parity = digits(label_field="parity", num_classes=2)
    assert parity.class_names == ["even", "odd"]
    assert set(parity.datasets["train"].labels("parity").tolist()) == {0, 1}


def test_augmentation_of_in_memory_data_changes_training_batches_only():
    flipped, plain = digits(augment=[v2.RandomHorizontalFlip(p=1.0)], batch_size=32), digits(batch_size=32)
    batch, expected = (next(iter(d.train_dataloader())) for d in (flipped, plain))  # the same items: same seed
    assert torch.equal(batch["index"], expected["index"])
    assert torch.allclose(batch["image"], expected["image"].flip(-1), atol=1e-6)
    # embedding the training split (and evaluating any split) reads it without augmentation
    for split in SPLITS:
        assert torch.equal(next(iter(flipped.loader(split)))["image"], next(iter(plain.loader(split)))["image"])


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda root: digits().probe_dataloader(), r"data 'digits' has no probe classes; set data.probe_classes"),
        (lambda root: digits(probe_classes=[11], num_classes=10), r"data.probe_classes names classes \['11'\]"),
        (lambda root: digits(classes=[1, 2], probe_classes=[2]), "a probe class must never be trained on"),
        (lambda root: digits(mean=[0.5]), "data.mean and data.std go together"),
        (
            lambda root: ImageFolderDataModule(root=root / "photos", image_size=16, on_device=True).setup(),
            "data.on_device=true .* reads image files",
        ),
        (lambda root: MNISTDataModule(root=root, test_fraction=0.2), "set data.test_fraction=0"),
    ],
    ids=["no-probe", "unknown-probe", "probe-trained", "mean-without-std", "files-on-device", "mnist-test-fraction"],
)
def test_mistakes_are_explained(photos, build, message):
    root, _ = photos
    with pytest.raises(UserError, match=message):
        build(root)


@pytest.mark.parametrize(
    "base,options",
    [("photos", ["image_folder", "image_csv", "awa2", "pairs_csv"]), ("in_memory", ["digits", "mnist", "toy_animals"])],
)
def test_data_configs_inherit_their_shared_keys(tmp_path, base, options):
    def raw(path):
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)

    shared = raw(config_dir() / "data" / "base" / f"{base}.yaml")
    shared.pop("defaults", None)
    for option in options:
        data = OmegaConf.to_container(compose_config([f"data={option}"], output_dir=tmp_path).data, resolve=False)
        own = raw(config_dir() / "data" / f"{option}.yaml")
        # an option states only what differs: its own value wins (pairs per batch, the toy animals' classes)
        assert "defaults" in own and not (set(own) & set(shared)) - REDEFINED
        for key, value in shared.items():
            assert data[key] == own.get(key, value), (option, key)
