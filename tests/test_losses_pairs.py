"""PairTask (simlearn/losses/pairs.py): the indices of the known pairs it feeds to PML."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses import ContrastiveLoss

from simlearn.errors import UserError
from simlearn.losses import PairTask, pair_indices


def test_pair_indices_find_both_images_in_any_order():
    pair = torch.tensor([7, 3, 3, 9, 7, 9])
    similar = torch.tensor([1, 0, 0, 1, 1, 1])
    a1, p, a2, n = pair_indices(pair, similar)
    assert sorted(zip(a1.tolist(), p.tolist(), strict=True)) == [(0, 4), (3, 5)]
    assert list(zip(a2.tolist(), n.tolist(), strict=True)) == [(1, 2)]
    with pytest.raises(UserError, match="exactly twice"):
        pair_indices(torch.tensor([1, 1, 2]), torch.tensor([1, 1, 0]))


def test_pair_task_feeds_exactly_the_known_pairs_to_pml():
    torch.manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(8, 4), dim=1).requires_grad_()
    batch = {"pair": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), "similar": torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])}
    task = PairTask(ContrastiveLoss(pos_margin=1.0, neg_margin=0.3, distance=CosineSimilarity()))
    loss = task(embeddings, batch)
    cos = (embeddings[0::2] * embeddings[1::2]).sum(dim=1).detach()
    positive = torch.relu(1.0 - cos[[0, 2]])
    negative = torch.relu(cos[[1, 3]] - 0.3)
    expected = positive[positive > 0].mean() + (negative[negative > 0].mean() if (negative > 0).any() else 0.0)
    assert loss.item() == pytest.approx(float(expected), abs=1e-6)
    loss.backward()
    assert embeddings.grad is not None
    with pytest.raises(UserError, match="0 \\(dissimilar\\)"):
        task.check_targets(torch.tensor([0, 1, 2]))
