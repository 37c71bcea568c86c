"""Training without labels (``data.labels=none``, a flat image folder), ``data.label_fraction``, ``init_from``, the
label-free metrics (copy detection, alignment, uniformity, effective rank) and the collapse warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simlearn.data.copies import CopyEdits, near_duplicate, near_duplicates
from simlearn.data.split_plan import SplitOptions, plan_splits
from simlearn.errors import UserError
from simlearn.evaluation.label_free import (
    COLLAPSE_EFFECTIVE_RANK,
    COLLAPSE_MEAN_COSINE,
    collapse_warning,
    label_free_metrics,
)
from simlearn.models.backbones import SmallCNN

from .helpers import run_main, run_training, train_config
from .photos import write_photo

FAST = ("trainer.max_epochs=1", "trainer.enable_progress_bar=false", "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null")  # fmt: skip


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
def brute_force(embeddings: np.ndarray, copies: np.ndarray) -> dict[str, float]:
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    copy = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    n = len(unit)
    cos = unit @ unit.T
    copy_cos = (unit * copy).sum(axis=1)
    ranks, first = [], []
    for i in range(n):
        others = np.delete(cos[i], i)
        ranks.append(1 + int((others > copy_cos[i]).sum()))
        first.append(copy_cos[i] >= others.max())  # a tie goes to the copy (the lower gallery row)
    off = ~np.eye(n, dtype=bool)
    s = np.linalg.svd(unit, compute_uv=False)
    p = s / s.sum()
    return {
        "copy/recall@1": float(np.mean(first)),
        "copy/mean_rank": float(np.mean(ranks)),
        "alignment": float(((unit - copy) ** 2).sum(axis=1).mean()),
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
    found = label_free_metrics(torch.from_numpy(embeddings).float(), torch.from_numpy(copies).float())
    expected = brute_force(embeddings.astype(np.float32).astype(np.float64), copies.astype(np.float32))
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
