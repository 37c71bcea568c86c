"""Samplers whose order depends only on (seed, epoch), so a resumed run sees the same batches as an unbroken one."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSeededRandomSampler(Sampler[int]):
    """A fresh random permutation each epoch, drawn from ``seed`` and the epoch number.

    Lightning calls :meth:`set_epoch` before every epoch (under DDP through its sampler wrapper, which then shards
    the same permutation across ranks), so shuffling does not depend on the global RNG state at resume time.
    """

    def __init__(self, num_items: int, seed: int = 0) -> None:
        self.num_items = num_items
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.num_items, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_items
