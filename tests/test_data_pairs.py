"""The pairs CSV data (simlearn/data/pairs.py): batches of pairs."""

from __future__ import annotations

import torch

from simlearn.data import PairsCSVDataModule


def test_pair_batches_hold_both_images_of_each_pair(pairs_csv):
    datamodule = PairsCSVDataModule(csv=pairs_csv, image_size=16, batch_size=5, num_workers=0, seed=0)
    datamodule.setup()
    assert sum(len(ds) for ds in datamodule.datasets.values()) == 60
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (10, 3, 16, 16)
    assert torch.equal(batch["pair"][0::2], batch["pair"][1::2]) and torch.equal(batch["index"] // 2, batch["pair"])
    assert torch.equal(batch["similar"][0::2], batch["similar"][1::2])
    for split, dataset in datamodule.datasets.items():
        assert set(dataset.labels("similar").tolist()) == {0, 1}, split
    again = PairsCSVDataModule(csv=pairs_csv, image_size=16, num_workers=0, seed=0)
    again.setup()
    assert torch.equal(again.datasets["test"].indices, datamodule.datasets["test"].indices)
