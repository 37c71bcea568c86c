"""The animals experiment: AwA2 layout end to end, its errors, the probe's numbers, the toy animals."""

import json
import math

import numpy as np
import pytest
import torch

from simlearn.data import AwA2DataModule
from simlearn.data.awa2 import awa2_name
from simlearn.demos.toy_animals import ToyAnimalsDataModule
from simlearn.errors import UserError
from simlearn.reports import probe_similarity

from .helpers import run_cli, run_training
from .photos import class_folders

AWA2_URL = "https://cvml.ista.ac.at/AwA2/"


@pytest.fixture
def awa2_root(tmp_path):
    """A tiny Animals_with_Attributes2/ tree: JPEGImages/<class>/<class>_<n>.jpg, generated JPEGs."""
    root = tmp_path / "Animals_with_Attributes2"
    class_folders(
        root / "JPEGImages", {"dolphin": 12, "tiger": 12, "horse": 12, "zebra": 5, "killer+whale": 6}, awa2_names=True
    )
    return root


def test_awa2_trains_end_to_end_and_writes_the_probe(tmp_path, awa2_root):
    metrics = run_training(
        tmp_path / "run",
        "experiment=animals_2d",
        f"data.root={awa2_root}",
        "data.image_size=32",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        "data.num_workers=0",
        "data.val_fraction=0.2",
        "data.test_fraction=0.25",
        "evaluation.ks=[1]",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
    )
    probe = json.loads((tmp_path / "run" / "probe.json").read_text())
    assert list(probe) == ["zebra"] and list(probe["zebra"]) == ["dolphin", "tiger", "horse"]
    for values in probe["zebra"].values():
        assert set(values) == {"cos", "angle_deg", "cos_weight", "assigned"}
        assert math.isclose(values["angle_deg"], math.degrees(math.acos(values["cos"])), abs_tol=1e-3)
    assert sum(v["assigned"] for v in probe["zebra"].values()) == pytest.approx(1.0)
    assert (tmp_path / "run" / "circle.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test/probe/zebra/tiger/cos" in metrics and 0.0 <= metrics["test/recall@1"] <= 1.0
    arrays = np.load(tmp_path / "run" / "embeddings.npz")
    assert arrays["embeddings"].shape == (9, 2) and set(arrays["animal"].tolist()) == {0, 1, 2}


@pytest.mark.parametrize("where", [[], ["++data.on_device=true"]], ids=["dataloader", "on-device"])
def test_toy_experiment_runs_the_whole_pipeline(tmp_path, where):
    metrics = run_training(
        tmp_path,
        "experiment=animals_2d_toy",
        "data.per_class=40",
        "data.probe_per_class=10",
        "trainer.max_epochs=1",
        *where,
    )
    probe = json.loads((tmp_path / "probe.json").read_text())["zebra"]
    assert list(probe) == ["dolphin", "tiger", "horse"]
    assert sum(v["assigned"] for v in probe.values()) == pytest.approx(1.0)
    assert (tmp_path / "circle.png").exists() and "val/best_map@r" in metrics


@pytest.mark.slow
def test_label_free_toy_experiment_trains_without_labels_and_probes_the_zebras(tmp_path):
    metrics = run_training(
        tmp_path,
        "experiment=animals_2d_toy_label_free",
        "data.per_class=24",
        "data.probe_per_class=6",
        "trainer.max_epochs=1",
    )
    assert json.loads((tmp_path / "splits.json").read_text())["labels"] == "none"
    probe = json.loads((tmp_path / "probe.json").read_text())["zebra"]
    assert list(probe) == ["dolphin", "tiger", "horse"]
    # no classifier: cosines to each class's test images only, no share assigned to a class direction
    assert all(v["assigned"] is None and -1.0 <= v["cos"] <= 1.0 for v in probe.values())
    assert metrics["test/probe/zebra/horse/cos"] == pytest.approx(probe["horse"]["cos"], abs=1e-5)


def test_awa2_class_names_and_folder_lookup(awa2_root):
    assert awa2_name("killer whale") == awa2_name("killer_whale") == "killer+whale"
    datamodule = AwA2DataModule(
        root=awa2_root.parent,
        classes=["dolphin", "killer whale"],
        num_classes=2,
        probe_classes=None,
        val_fraction=0.34,
    )
    datamodule.setup()  # the parent of Animals_with_Attributes2/ works too
    assert datamodule.class_names == ["dolphin", "killer+whale"]


def test_missing_awa2_root_or_class_is_one_clear_error(tmp_path, awa2_root):
    with pytest.raises(UserError, match="AwA2 not found") as error:
        AwA2DataModule(root=tmp_path / "nowhere", num_classes=3, classes=["dolphin", "tiger", "horse"]).setup()
    assert AWA2_URL in str(error.value) and "JPEGImages/<class>/" in str(error.value)
    datamodule = AwA2DataModule(root=awa2_root, classes=["dolphin", "tiger", "okapi"], num_classes=3)
    with pytest.raises(UserError, match=r"no image folder for the classes \['okapi'\]") as error:
        datamodule.setup()
    assert AWA2_URL in str(error.value) and "zebra" in str(error.value)


@pytest.mark.slow
def test_missing_awa2_from_the_command_line_has_no_traceback(tmp_path):
    result = run_cli(
        "train.py", "experiment=animals_2d", f"data.root={tmp_path}/nowhere", f"hydra.run.dir={tmp_path}/run"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert "AwA2 not found" in result.stderr and AWA2_URL in result.stderr and "JPEGImages" in result.stderr


def brute_force_probe(probe, probe_labels, test, test_labels, weights):
    """The probe's numbers with explicit loops over every pair of items."""

    def cos(a, b):
        return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))

    result = {}
    for p in sorted(set(probe_labels.tolist())):
        members = [e for e, label in zip(probe, probe_labels, strict=True) if label == p]
        for c in range(weights.shape[1]):
            others = [e for e, label in zip(test, test_labels, strict=True) if label == c]
            pairs = [cos(a, b) for a in members for b in others]
            assigned = [int(np.argmax([cos(a, weights[:, k]) for k in range(weights.shape[1])])) for a in members]
            result[(p, c)] = {
                "cos": sum(pairs) / len(pairs),
                "cos_weight": sum(cos(a, weights[:, c]) for a in members) / len(members),
                "assigned": sum(1 for k in assigned if k == c) / len(members),
            }
    return result


def test_probe_numbers_match_brute_force_loops():
    rng = np.random.default_rng(0)
    test = rng.normal(size=(40, 3)) * rng.uniform(0.5, 2, size=(40, 1))  # not unit length: cosines still
    test_labels = np.repeat([0, 1, 2, 3], 10)
    probe = rng.normal(size=(12, 3))
    probe_labels = np.repeat([0, 1], 6)
    weights = rng.normal(size=(3, 4))
    names = ["dolphin", "tiger", "horse", "seal"]
    result = probe_similarity(probe, probe_labels, ["zebra", "okapi"], test, test_labels, names, weights)
    expected = brute_force_probe(probe, probe_labels, test, test_labels, weights)
    for (p, c), values in expected.items():
        got = result[["zebra", "okapi"][p]][names[c]]
        assert got["cos"] == pytest.approx(values["cos"], abs=1e-9)
        assert got["angle_deg"] == pytest.approx(math.degrees(math.acos(values["cos"])), abs=1e-6)
        assert got["cos_weight"] == pytest.approx(values["cos_weight"], abs=1e-9)
        assert got["assigned"] == pytest.approx(values["assigned"])
    without = probe_similarity(probe, probe_labels, ["zebra", "okapi"], test, test_labels, names, None)
    assert (
        without["zebra"]["tiger"]["assigned"] is None
        and without["zebra"]["tiger"]["cos"] == result["zebra"]["tiger"]["cos"]
    )


def test_probe_on_the_circle_by_hand():
    """Tigers at 0°, horses at 60°, dolphins at 180°, zebras at 20°: cos and angles are those of the circle."""

    def at(degrees):
        return np.array([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])

    test = at([0, 0, 60, 60, 180, 180])
    result = probe_similarity(
        at([20, 20]),
        np.zeros(2, int),
        ["zebra"],
        test,
        np.array([0, 0, 1, 1, 2, 2]),
        ["tiger", "horse", "dolphin"],
        at([0, 60, 180]).T,
    )["zebra"]
    assert result["tiger"]["angle_deg"] == pytest.approx(20) and result["horse"]["angle_deg"] == pytest.approx(40)
    assert result["dolphin"]["cos"] == pytest.approx(math.cos(math.radians(160)))
    assert (result["tiger"]["assigned"], result["horse"]["assigned"], result["dolphin"]["assigned"]) == (1.0, 0.0, 0.0)


def toy(**overrides) -> ToyAnimalsDataModule:
    kwargs = dict(per_class=20, probe_per_class=6, seed=3, image_size=32)
    datamodule = ToyAnimalsDataModule(**{**kwargs, **overrides})
    datamodule.setup()
    return datamodule


def test_toy_animals_are_deterministic_from_the_seed():
    a, b, c = toy(), toy(), toy(seed=4)
    for split in ("train", "val", "test", "probe"):
        assert torch.equal(a.datasets[split].images, b.datasets[split].images)
        assert torch.equal(a.datasets[split].indices, b.datasets[split].indices)
    assert not torch.equal(a.datasets["train"].images, c.datasets["train"].images)
    assert a.class_names == ["dolphin", "tiger", "horse"] and a.probe_class_names == ["zebra"]
    assert a.datasets["train"].images.shape[1:] == (3, 32, 32)
    # each class has its own stream: another selection draws the same tigers
    tigers = a.datasets["train"].images[a.datasets["train"].fields["animal"] == 1]
    alone = toy(classes=["tiger", "horse"], num_classes=2)
    assert torch.equal(tigers, alone.datasets["train"].images[alone.datasets["train"].fields["animal"] == 0])


def test_toy_probe_is_kept_out_and_shares_attributes():
    datamodule = toy()
    probe = next(iter(datamodule.probe_dataloader()))
    assert probe["image"].shape == (6, 3, 32, 32) and set(probe["animal"].tolist()) == {3}
    assert set(probe["striped"].tolist()) == {1} and set(probe["four_legged"].tolist()) == {1}
    train = datamodule.datasets["train"]
    assert set(train.labels("animal").tolist()) == {0, 1, 2}
    by_class = {
        name: train.labels("striped")[train.labels("animal") == i].unique().tolist()
        for i, name in enumerate(datamodule.class_names)
    }
    assert by_class == {"dolphin": [0], "tiger": [1], "horse": [0]}
    with pytest.raises(UserError, match="cannot draw"):
        ToyAnimalsDataModule(classes=["dolphin", "unicorn"])


def test_toy_probe_on_device_serves_the_probe_images():
    """data.on_device=true: the probe loader draws the zebras, not the training tensor's first items (dolphins)."""
    plain, on_device = toy(), toy(on_device=True)
    expected = next(iter(plain.probe_dataloader()))
    probe = next(iter(on_device.probe_dataloader()))
    assert set(probe["animal"].tolist()) == {3} and set(probe["striped"].tolist()) == {1}
    for key in expected:
        assert torch.equal(probe[key], expected[key]), key
