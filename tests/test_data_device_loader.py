"""data.on_device: batches drawn from a device-resident tensor give the same training as the DataLoader path."""

import pytest
import torch
from torch.utils.data import DistributedSampler

from simlearn.data import DigitsDataModule
from simlearn.data.device_loader import DeviceBatchLoader
from simlearn.data.samplers import EpochSeededRandomSampler

from .helpers import run_training


def digits(**overrides) -> DigitsDataModule:
    datamodule = DigitsDataModule(label_field="digit", image_size=8, channels=1, num_classes=10, **overrides)
    datamodule.setup()
    return datamodule


def test_same_batches_as_the_dataloader():
    plain, on_device = digits(batch_size=50), digits(batch_size=50, on_device=True)
    for loader in (plain.train_dataloader(), on_device.train_dataloader()):
        loader.sampler.set_epoch(3)
    for a, b in zip(plain.train_dataloader(), on_device.train_dataloader(), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_shard_like_distributed_sampler(world_size):
    dataset = digits(batch_size=64).datasets["test"]  # 450 items: 3 ranks → 150 each, 2 ranks → 225
    seen = []
    for rank in range(world_size):
        loader = DeviceBatchLoader(dataset, 64, rank=rank, world_size=world_size)
        positions = torch.cat([batch["index"] for batch in loader])
        expected = list(DistributedSampler(range(len(dataset)), world_size, rank, shuffle=False))
        assert torch.equal(positions, dataset.indices[expected])
        assert len(loader) == -(-len(expected) // 64)
        seen.append(positions)
    assert set(torch.cat(seen).tolist()) == set(dataset.indices.tolist())


def test_training_shards_are_disjoint_and_change_every_epoch():
    dataset = digits().datasets["train"]
    shards = []
    for rank in range(2):
        sampler = EpochSeededRandomSampler(len(dataset), seed=5)
        sampler.set_epoch(1)
        loader = DeviceBatchLoader(dataset, 32, sampler=sampler, rank=rank, world_size=2)
        shards.append(torch.cat([b["index"] for b in loader]))
    assert len(set(shards[0].tolist()) & set(shards[1].tolist())) <= 1  # at most the one padding repeat
    sampler.set_epoch(2)
    assert not torch.equal(torch.cat([b["index"] for b in loader]), shards[1])


def test_m_per_class_batches_on_device():
    datamodule = digits(batch_size=64, m_per_class=8, on_device=True)
    batch = next(iter(datamodule.train_dataloader()))
    counts = torch.bincount(batch["digit"], minlength=10)
    assert set(counts[counts > 0].tolist()) == {8}


@pytest.mark.slow
def test_on_device_training_matches_the_dataloader_path(tmp_path):
    plain = run_training(tmp_path / "plain", "trainer.max_epochs=2")
    on_device = run_training(tmp_path / "device", "trainer.max_epochs=2", "data.on_device=true")
    assert on_device.pop("train/wall_s") > 0 and plain.pop("train/wall_s") > 0  # the one thing that may differ
    assert on_device == plain
