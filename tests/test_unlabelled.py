"""Training without labels (``data.labels=none``, a flat image folder), ``data.label_fraction``, ``init_from``, the
label-free metrics (copy detection, alignment, uniformity, effective rank) and the collapse warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from simlearn.data.copies import CopyEdits, near_duplicate, near_duplicates
from simlearn.data.split_plan import SplitOptions, plan_splits
from simlearn.errors import UserError
from simlearn.evaluation.label_free import (
    COLLAPSE_EFFECTIVE_RANK,
    COLLAPSE_MEAN_COSINE,
    collapse_warning,
    copy_queries,
    label_free_metrics,
)
from simlearn.models.backbones import SmallCNN

from .helpers import run_main, run_training, train_config
from .photos import write_photo

FAST = ("trainer.max_epochs=1", "callbacks.rich_progress_bar=null", "callbacks.model_summary=null")


class NearConstantBackbone(SmallCNN):
    """A collapsed encoder: one fixed direction plus a thousandth of small_cnn's features."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_buffer("direction", torch.ones(self.out_features))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.direction + 1e-3 * super().forward(images)


# -- the copies -------------------------------------------------------------------------------------------------------
def test_a_copy_depends_on_its_item_and_seed_only_and_stays_an_image():
    # smooth images (random 4 × 4 patterns blown up): what the edits keep, unlike pixel noise, which a resize blurs
    images = torch.nn.functional.interpolate(torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(0)), 24)
    copies = near_duplicates(images, [10, 11, 12, 13, 14, 15], seed=3)
    assert copies.shape == images.shape and copies.min() >= 0 and copies.max() <= 1
    # the same item gets the same copy in another batch, alone or with others
    assert torch.equal(near_duplicates(images[2:4], [12, 13], seed=3), copies[2:4])
    assert torch.equal(near_duplicate(images[5], 15, seed=3), copies[5])
    # another seed or item number: other edits
    assert not torch.equal(near_duplicates(images, [10, 11, 12, 13, 14, 15], seed=4), copies)
    # near: closer to its own image than to the others, edited nonetheless
    distance = (copies[:, None] - images[None]).abs().mean(dim=(2, 3, 4))
    assert (distance.argmin(dim=1) == torch.arange(6)).all()
    assert (distance.diagonal() > 0).all()
    # without edits (and JPEG at quality 100; grey, which has no chroma subsampling), the image to within rounding
    grey = images[:, :1]
    plain = CopyEdits(max_crop=0, max_shift=0, max_rotation=0, max_photometric=0, min_resize=1, jpeg_quality=(100, 100))
    assert (near_duplicates(grey, range(6), edits=plain) - grey).abs().max() < 0.01


# -- the metrics, against a brute force --------------------------------------------------------------------------------
def brute_force(embeddings: np.ndarray, copies: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    copy = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    n = len(unit)
    cos = unit @ unit.T
    copy_cos = (unit * copy).sum(axis=1)
    ranks, first = [], []
    for i in queries:
        others = np.delete(cos[i], i)
        ranks.append(1 + int((others > copy_cos[i]).sum()))
        first.append(copy_cos[i] >= others.max())  # a tie goes to the copy (the lower gallery row)
    off = ~np.eye(n, dtype=bool)
    s = np.linalg.svd(unit, compute_uv=False)
    p = s / s.sum()
    return {
        "copy/recall@1": float(np.mean(first)),
        "copy/mean_rank": float(np.mean(ranks)),
        "alignment": float(((unit - copy) ** 2).sum(axis=1)[queries].mean()),
        "uniformity": float(np.log(np.exp(-2 * (2 - 2 * cos[off])).mean())),
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
        "mean_cosine": float(cos[off].mean()),
    }


def test_label_free_metrics_equal_a_brute_force():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(60, 8))
    # copies: some near their item, some far (so that recall@1 and the mean rank are neither 0 nor perfect)
    noise = np.where(np.arange(60)[:, None] < 30, 0.1, 3.0)
    copies = embeddings + noise * rng.normal(size=(60, 8))
    every = np.arange(60)
    # a share of the items as the queries (a large split's): the others' copies are NaN rows
    some = np.flatnonzero(copy_queries(torch.arange(60), 0.5).numpy())
    assert 15 < len(some) < 45
    for queries in (every, some):
        given = copies.copy()
        given[np.setdiff1d(every, queries)] = np.nan
        found = label_free_metrics(torch.from_numpy(embeddings).float(), torch.from_numpy(given).float())
        expected = brute_force(embeddings.astype(np.float32), copies.astype(np.float32), queries)
        assert 0.3 < expected["copy/recall@1"] < 1 and expected["copy/mean_rank"] > 2
        assert found.keys() == expected.keys()
        for key, value in expected.items():
            assert found[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_the_collapse_rule_names_both_values_and_stays_quiet_otherwise():
    healthy = {"test/effective_rank": COLLAPSE_EFFECTIVE_RANK + 1, "test/mean_cosine": COLLAPSE_MEAN_COSINE - 0.1}
    assert collapse_warning(healthy) is None
    assert collapse_warning({}) is None
    for collapsed in ({**healthy, "test/effective_rank": 1.01}, {**healthy, "test/mean_cosine": 0.9999}):
        line = collapse_warning(collapsed)
        assert line is not None and "\n" not in line and "collapsed" in line and "effective rank" in line


# -- the collapse warning of a run ----------------------------------------------------------------------------------
def test_a_collapsed_encoder_is_reported_in_one_line_at_the_end_of_training(tmp_path, capfd):
    result = run_main(
        "simlearn.cli.train",
        "backbone._target_=tests.test_unlabelled.NearConstantBackbone",
        "head=identity",
        *FAST,
        f"hydra.run.dir={tmp_path}",
        "logger=none",
        "reports.plots=null",
        capfd=capfd,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if "embeddings have collapsed" in line]
    assert len(lines) == 1, output[-3000:]
    assert "effective rank 1.0" in lines[0]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test/effective_rank"] < COLLAPSE_EFFECTIVE_RANK < metrics["test/effective_rank"] + 2


def test_a_healthy_run_raises_no_collapse_warning(trained_run, trained_run_console):
    stdout, stderr = trained_run_console
    assert "collapsed" not in stdout + stderr
    metrics = json.loads((trained_run / "metrics.json").read_text())
    # the label-free metrics are reported beside the labelled ones, in the printed table too
    for key in ("copy/recall@1", "copy/mean_rank", "alignment", "uniformity", "effective_rank", "recall@1"):
        assert f"test/{key}" in metrics and key in stdout, key
    assert (
        metrics["test/effective_rank"] > COLLAPSE_EFFECTIVE_RANK and metrics["test/mean_cosine"] < COLLAPSE_MEAN_COSINE
    )


# -- training without labels ---------------------------------------------------------------------------------------
def test_labels_none_gives_the_loss_no_label_and_keeps_them_for_evaluation(tmp_path, monkeypatch):
    from simlearn.losses.reconstruction import ReconstructionTask

    seen: list[set[str]] = []
    forward = ReconstructionTask.forward

    def spy(self, embeddings, batch):
        seen.append(set(batch))
        return forward(self, embeddings, batch)

    monkeypatch.setattr(ReconstructionTask, "forward", spy)
    metrics = run_training(tmp_path, "loss=reconstruction", "data.labels=none", *FAST)
    assert seen and all(keys == {"image", "index"} for keys in seen), seen[:3]
    assert {"test/recall@1", "test/map@r", "test/copy/recall@1", "val/recall@1"} <= set(metrics)
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert splits["labels"] == "none" and splits["splits"]["train"]["num_classes"] == 10
    with np.load(tmp_path / "embeddings.npz") as arrays:
        assert "digit" in arrays and "labels" in arrays  # the test labels, for evaluation


@pytest.mark.parametrize("on_device", [False, True])
def test_labels_none_batches_carry_no_label_field_in_training_only(on_device):
    from simlearn.build import build_datamodule

    cfg = train_config(Path("/tmp/unused"), "data.labels=none", f"data.on_device={str(on_device).lower()}")
    datamodule = build_datamodule(cfg.data)
    assert set(next(iter(datamodule.loader("train", train=True)))) == {"image", "index"}
    assert {"digit", "parity", "magnitude"} <= set(next(iter(datamodule.loader("test"))))
    assert datamodule.label_fields == ["digit", "parity", "magnitude"]


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (
            ["data.labels=none"],
            ["reads the label field 'digit'", "data.labels=none", "loss=simclr, vicreg, byol or reconstruction"],
        ),
        (["data.labels=some"], ["data.labels must be one of train, none", "'some'"]),
        (["data.label_fraction=0"], ["data.label_fraction must be in (0, 1]"]),
        (["data.label_fraction=0.5", "data.labels=none"], ["data.labels=none trains with none"]),
    ],
)
def test_label_options_that_cannot_work_are_one_line(tmp_path, capfd, overrides, fragments):
    result = run_main("simlearn.cli.train", *overrides, f"hydra.run.dir={tmp_path}", "logger=none", capfd=capfd)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def flat_folder(root: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    colours = [(200, 60, 40), (40, 160, 60), (50, 70, 200), (220, 200, 40)]
    return [write_photo(root / f"{i:03d}.jpg", colours[i % 4], rng, size=24) for i in range(count)]


@pytest.mark.slow
def test_a_flat_folder_trains_without_labels_writes_its_run_dir_and_its_checkpoint_serves(tmp_path, capfd):
    from fastapi.testclient import TestClient

    from simlearn.serve import create_app, open_service

    from .serving import serve_config, upload

    files = flat_folder(tmp_path / "photos", 40)
    run = tmp_path / "run"
    photos = [f"data.root={tmp_path / 'photos'}", "data.image_size=16", "augment=none"]
    # the label-free contrastive loss: two views of each photo, made in batches on the training device
    metrics = run_training(run, "data=image_folder", *photos, "loss=simclr", *FAST)
    assert {"test/copy/recall@1", "test/copy/mean_rank", "test/alignment", "test/uniformity"} <= set(metrics)
    assert not any(key.endswith(("/recall@1", "/map@r")) and "copy" not in key for key in metrics)
    assert "val/best_copy/recall@1" in metrics  # the checkpoint monitors the label-free validation metric
    splits = json.loads((run / "splits.json").read_text())
    assert splits["labels"] == "absent" and splits["test_protocol"] == "label-free"
    assert sum(split["num_items"] for split in splits["splits"].values()) == len(files)
    assert not (run / "per_class.csv").exists() and not (run / "similarity.json").exists()
    with np.load(run / "embeddings.npz") as arrays:
        assert set(arrays) == {"embeddings", "index", "paths"}
        assert len(arrays["embeddings"]) == splits["splits"]["test"]["num_items"]
    ckpt = next((run / "checkpoints").glob("best-*.ckpt"))
    # the checkpoint serves a search: its own test split (the default gallery), and the folder
    split_service = open_service(serve_config(ckpt, None, tmp_path / "cache_split"))
    assert len(split_service.gallery.embeddings) == splits["splits"]["test"]["num_items"]
    client = TestClient(create_app(open_service(serve_config(ckpt, tmp_path / "photos", tmp_path / "cache"))))
    answer = client.post("/search", **upload(files[7], k="3")).json()
    assert answer["results"][0]["path"].endswith(files[7].name)
    assert answer["results"][0]["cosine"] == pytest.approx(1.0, abs=1e-5) and answer["results"][0]["class_name"] is None


def test_a_flat_folder_refuses_options_that_need_classes(tmp_path, capfd):
    flat_folder(tmp_path / "photos", 12)
    result = run_main(
        "simlearn.cli.train", "data=image_folder", f"data.root={tmp_path / 'photos'}", "data.image_size=16",
        "loss=reconstruction", "data.split_by=class", f"hydra.run.dir={tmp_path / 'run'}", capfd=capfd,
    )  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "data.split_by=class needs classes" in result.stderr and "no labels" in result.stderr


# -- few labels -----------------------------------------------------------------------------------------------------
def test_label_fraction_keeps_a_seeded_share_of_each_class_at_least_one():
    codes = torch.tensor([0] * 60 + [1] * 30 + [2] * 6)
    names = ["a", "b", "c"]
    full = plan_splits(codes, names, None, SplitOptions(val_fraction=0.1, test_fraction=0.2, seed=3))
    few = plan_splits(codes, names, None, SplitOptions(val_fraction=0.1, test_fraction=0.2, seed=3, label_fraction=0.1))
    kept, train = few.indices["train"], full.indices["train"]
    assert set(kept.tolist()) <= set(train.tolist())
    for label in range(3):
        n = int((full.labels[train] == label).sum())
        assert int((few.labels[kept] == label).sum()) == max(1, round(0.1 * n))
    assert torch.equal(few.indices["val"], full.indices["val"]) and torch.equal(
        few.indices["test"], full.indices["test"]
    )
    assert few.train_items_before_fraction == len(train)
    again = plan_splits(
        codes, names, None, SplitOptions(val_fraction=0.1, test_fraction=0.2, seed=3, label_fraction=0.1)
    )
    other = plan_splits(
        codes, names, None, SplitOptions(val_fraction=0.1, test_fraction=0.2, seed=4, label_fraction=0.1)
    )
    assert torch.equal(again.indices["train"], kept) and not torch.equal(other.indices["train"], kept)
    with pytest.raises(UserError, match="label_fraction"):
        SplitOptions(label_fraction=1.5)


def test_label_fraction_items_are_recorded_in_splits_json(tmp_path):
    from simlearn.build import build_datamodule
    from simlearn.reports.outputs import write_splits

    datamodule = build_datamodule(train_config(tmp_path, "data.label_fraction=0.05").data)
    train = datamodule.datasets["train"]
    entry = json.loads(write_splits(tmp_path, datamodule).read_text())["splits"]["train"]
    assert entry["label_fraction"] == 0.05 and entry["labelled_items"] == train.indices.tolist()
    assert entry["num_items"] == len(train) < entry["num_items_before_label_fraction"]
    assert entry["num_classes"] == 10 and min(entry["items_per_class"].values()) >= 1


def test_init_from_starts_the_encoder_from_a_checkpoint_and_refuses_other_shapes(trained_run, tmp_path):
    from simlearn.build import build_run

    ckpt = trained_run / "checkpoints" / "last.ckpt"
    run = build_run(train_config(tmp_path / "a", f"init_from={ckpt}", "data.label_fraction=0.1"))
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for name, value in run.model.encoder.state_dict().items():
        assert torch.equal(value, saved[f"encoder.{name}"]), name
    with pytest.raises(UserError, match=r"init_from=.*do not fit") as error:
        build_run(train_config(tmp_path / "b", f"init_from={ckpt}", "head.out_dim=32"))
    assert "\n" not in str(error.value)


def test_init_from_starts_a_momentum_teacher_as_the_loaded_encoder_and_names_itself(trained_run, tmp_path):
    """BYOL fine-tuned from a checkpoint regresses onto the loaded encoder, not onto the random one it was built with;
    a missing file is named as init_from (not ckpt_path)."""
    from simlearn.build import build_run

    ckpt = trained_run / "checkpoints" / "last.ckpt"
    run = build_run(train_config(tmp_path / "a", f"init_from={ckpt}", "loss=byol"))
    teacher = next(task.teacher for task in run.model.loss.tasks.values() if hasattr(task, "teacher"))
    for name, value in run.model.encoder.state_dict().items():
        assert torch.equal(teacher.state_dict()[name], value), name
    with pytest.raises(UserError, match=r"^init_from='[^']*missing\.ckpt' is not a file") as error:
        build_run(train_config(tmp_path / "b", f"init_from={tmp_path / 'missing.ckpt'}"))
    assert "ckpt_path" not in str(error.value)
