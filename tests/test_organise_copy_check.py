"""The planted-copy check of ``simlearn-organise`` (:mod:`simlearn.organise.copy_check`): it warns for a model that
cannot separate copies from classmates, says "lower the threshold" for one that separates them below it, stays quiet
for a pixel-like embedder, and the command writes its figures into organise.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from simlearn.inference import InferenceModel
from simlearn.organise.copy_check import check_copies, copy_scores, gallery_copy_check
from simlearn.retrieval.gallery import Gallery

from .helpers import run_main
from .serving import write_digit_gallery
from .test_errors import assert_clean_failure


class Pixels(nn.Module):
    """The raw pixels as the embedding: a copy detector for photometric edits (no class knowledge at all)."""

    embedding_dim = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Collapsed(nn.Module):
    """A class-collapsed encoder: every image whose mean ink falls in one of a few bins is the same point, as a
    model trained to merge each class into one point makes classmates."""

    embedding_dim = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bins = (x.mean(dim=(1, 2, 3)) * 12).long().clamp(0, 3)
        return nn.functional.one_hot(bins, 4).float() + 0.01


class Offset(nn.Module):
    """The pixels far from the origin, as the untrained network's embeddings are: every image's nearest other item
    is at cosine ≥ 0.999, yet each near-copy still beats its source's nearest other item (the order is kept)."""

    embedding_dim = 65

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.flatten(1), torch.full((len(x), 1), 100.0)], dim=1)


def fake_model(encoder: nn.Module) -> InferenceModel:
    preprocessing = {"image_size": 8, "channels": 1, "mean": [0.0], "std": [1.0]}
    return InferenceModel(encoder, preprocessing, OmegaConf.create({}), "fake.ckpt", "checkpoint", "fake.ckpt")


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory) -> list[Path]:
    return write_digit_gallery(tmp_path_factory.mktemp("copy_check") / "digits", per_class=10)


def gallery_of(model: InferenceModel, files: list[Path]) -> Gallery:
    embedded = model.embed_files(files)
    return Gallery(embedded.embeddings, None, [str(p) for p in embedded.paths], files[0].parents[1], None)


def test_a_class_collapsed_model_cannot_separate_copies(digit_files):
    model = fake_model(Collapsed())
    result = check_copies(model, gallery_of(model, digit_files), 0.999, sample=40)
    assert result.checked == 40 and result.skipped is None
    assert result.not_above_neighbour > 0.5 and not result.separates and result.warns
    line = result.warning()
    assert "cannot separate copies from classmates" in line and f"of {result.checked} planted" in line
    assert f"{result.not_above_neighbour:.0%}" in line and "label-free model" in line and "\n" not in line


def test_a_pixel_embedder_separates_copies_and_does_not_warn(digit_files):
    model = fake_model(Pixels())
    gallery = gallery_of(model, digit_files)
    result = check_copies(model, gallery, 0.99, sample=40)
    assert result.checked == 40 and result.not_above_neighbour == 0 and result.below_threshold == 0
    assert not result.warns and result.warning() is None
    # the copies are near (brightness/contrast and JPEG), not the sources themselves
    assert 0.99 < result.median_copy_cosine < 1 and result.median_neighbour_cosine < result.median_copy_cosine
    # the same model at a threshold above what its copies reach: separated, so the fix is the threshold
    strict = check_copies(model, gallery, 0.99999, sample=40)
    assert strict.separates and strict.below_threshold > 0.5 and strict.warns
    line = strict.warning()
    assert "lower the threshold" in line and f"threshold={strict.keep_threshold:.4f}" in line
    assert strict.keep_threshold < 0.99999 and "cannot separate" not in line


def test_a_model_that_merges_different_images_warns_in_one_line(digit_files):
    """The untrained-like case: copies separated from the nearest other item, but (nearly) every sampled item has a
    different image at cos ≥ the threshold: the merge rule alone warns, and says a gallery of copies does that too."""
    model = fake_model(Offset())
    result = check_copies(model, gallery_of(model, digit_files), 0.999, sample=40)
    assert result.separates and result.below_threshold == 0  # the first rule alone would stay quiet
    assert result.neighbours_above_threshold > 0.9 and result.merges and result.warns
    line = result.warning()
    assert f"{result.neighbours_above_threshold:.0%} of 40 sampled gallery images" in line and "\n" not in line
    assert "either the gallery is mostly copies or the model merges different images" in line
    assert "cannot separate" not in line and "lower the threshold" not in line
    assert result.summary()["neighbours_above_threshold"] == result.neighbours_above_threshold
    # a share is warned about only above merge_share
    quiet = check_copies(model, gallery_of(model, digit_files), 0.999, sample=40, merge_share=1.0)
    assert not quiet.merges and not quiet.warns and quiet.warning() is None


def test_both_rules_give_one_line(digit_files):
    model = fake_model(Collapsed())
    result = check_copies(model, gallery_of(model, digit_files), 0.999, sample=40)
    assert result.merges and not result.separates
    line = result.warning()
    assert "\n" not in line and line.count("copy check:") == 1
    assert "merges different images" in line and "cannot separate copies from classmates" in line


def test_the_pixel_embedder_does_not_merge_different_images(digit_files):
    """simlearn's pixel embedder on digits without copies: no two different digits at cos ≥ 0.999."""
    from simlearn.inference.pixels import pixel_model

    model = pixel_model(size=8, channels=1)
    result = check_copies(model, gallery_of(model, digit_files), 0.999, sample=40)
    assert result.checked == 40 and result.neighbours_above_threshold == 0 and not result.merges
    assert result.not_above_neighbour == 0 and "merges" not in (result.warning() or "")


def test_copy_scores_rule():
    """A copy fails when below the threshold or not above its source's nearest other item; an exact copy of the
    source in the gallery counts as that nearest item."""
    gallery = np.eye(4, dtype=np.float32)
    gallery[3] = gallery[0]  # item 3 is an exact copy of item 0
    sources = gallery[[0, 1, 2]]
    copies = sources + np.float32(0.01) * np.roll(np.eye(4, dtype=np.float32), 1, axis=1)[[0, 1, 2]]
    # merge_share=0.5: the first rule alone (the merge rule is below)
    result = copy_scores(copies, sources, gallery, np.array([0, 1, 2]), 0.9, warn_share=0.5, merge_share=0.5)
    assert result.checked == 3 and result.below_threshold == 0
    assert result.not_above_neighbour == pytest.approx(1 / 3)  # item 0: its exact copy scores 1 > the copy's 0.99995
    assert result.failed == pytest.approx(1 / 3) and not result.warns
    assert copy_scores(copies, sources, gallery, np.array([0, 1, 2]), 0.9999999, warn_share=0.5).warns
    # the merge rule: item 0's nearest other item (its exact copy) is at cos 1 ≥ 0.9; items 1 and 2 have none
    assert result.neighbours_above_threshold == pytest.approx(1 / 3) and not result.merges  # 1/3 ≤ 0.5
    merged = copy_scores(copies, sources, gallery, np.array([0, 1, 2]), 0.9, warn_share=0.5)  # MERGE_SHARE
    assert merged.merges and merged.warns and "mostly copies" in merged.warning()
    assert not copy_scores(copies[1:], sources[1:], gallery, np.array([1, 2]), 0.9, warn_share=0.5).merges


def test_a_gallery_without_image_files_is_skipped_and_says_so(caplog):
    cfg = OmegaConf.create({"copy_check": True, "copy_check_sample": 10})
    model = fake_model(Pixels())
    gallery = Gallery(np.eye(3, dtype=np.float32), None, None, Path("data digits"), None, ids=["a", "b", "c"])
    with caplog.at_level(logging.INFO, logger="simlearn.organise.copy_check"):
        result = gallery_copy_check(model, gallery, 0.999, cfg)
    assert result.checked == 0 and "no image files" in result.skipped and not result.warns
    assert result.summary()["skipped"] == result.skipped and "no image files" in caplog.text
    off = gallery_copy_check(model, gallery, 0.999, OmegaConf.create({"copy_check": False}))
    assert off.skipped == "copy_check=false"


def test_the_command_writes_the_check_into_organise_json_and_warns_once(trained_run, digit_files, tmp_path, capfd):
    """Through the command, at a threshold above what any near-copy reaches: the one warning line names a lower
    threshold, and organise.json holds the figures."""
    out = tmp_path / "run"
    args = [f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", f"gallery={digit_files[0].parents[1]}"]
    args += [f"hydra.run.dir={out}", f"cache_dir={tmp_path / 'cache'}", "device=cpu", "sheets=false"]
    result = run_main("simlearn.cli.organise", *args, "copy_check_sample=30", "threshold=0.99999", capfd=capfd)
    assert result.returncode == 0, result.stderr[-3000:]
    check = json.loads((out / "organise.json").read_text())["copy_check"]
    assert check["checked"] == 30 and check["threshold"] == 0.99999 and check["skipped"] is None
    assert check["below_threshold"] > 0.5 and check["warns"] and check["keep_threshold"] < 0.99999
    logged = [line for line in (result.stdout + result.stderr).splitlines() if "copy check:" in line]
    assert len(logged) == 1 and check["warning"] in logged[0] and "lower the threshold" in logged[0]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("copy_check_sample=0", "copy_check_sample=0 must be a whole number"),
        ("copy_check=maybe", "true or false"),
        ("copy_check_merge_share=1.5", "copy_check_merge_share=1.5 must be a share from 0 to below 1"),
    ],
)
def test_bad_check_options_are_one_line(trained_run, tmp_path, capfd, override, fragment):
    args = [
        f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
        f"gallery={tmp_path}",
        f"hydra.run.dir={tmp_path}",
    ]
    assert_clean_failure(run_main("simlearn.cli.organise", *args, override, capfd=capfd), fragment)


@pytest.fixture
def bench(monkeypatch):
    """scripts/bench_organise.py as a module (scripts/ on the path, as when it runs)."""
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    return importlib.import_module("bench_organise")


def test_bench_counts_the_planted_pairs_as_its_docstring_says(bench):
    """The counting rule of scripts/bench_organise.py: every pair at cosine ≥ t is found, true when both items are
    of one source's group; checked against all pairs counted one by one."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((12, 1, 8, 8), dtype=np.float32))
    catalogue = bench.planted_catalogue(images, sources=3, distractors=5, seed=0)
    group, kind = catalogue["group"], catalogue["kind"]
    per_source = len(bench.KINDS) + 1
    assert len(group) == 3 * per_source + 5 and (group == -1).sum() == 5
    # --check-only draws the same sources without planting the catalogue
    assert np.array_equal(bench.source_indices(12, 3, 5, seed=0)[0], catalogue["test_index"])
    assert [int((kind[group == s] >= 0).sum()) for s in range(3)] == [len(bench.KINDS)] * 3
    exact = catalogue["images"][kind == bench.KINDS.index("exact")]
    assert np.array_equal(exact, catalogue["images"][catalogue["source_item"]])
    x = bench.unit(catalogue["images"])
    thresholds = (0.5, 0.9, 0.99)
    counts = bench.pair_counts(x, group, thresholds, chunk=7)
    cos = x.astype(np.float64) @ x.T.astype(np.float64)
    i, j = np.triu_indices(len(x), k=1)
    same = (group[i] == group[j]) & (group[i] >= 0)
    for (found, true), t in zip(counts.tolist(), thresholds, strict=True):
        assert found == int((cos[i, j] >= t).sum()) and true == int(((cos[i, j] >= t) & same).sum())
    assert counts[-1, 1] >= 3  # the exact copies at least
