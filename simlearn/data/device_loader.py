"""Batches drawn straight from a dataset tensor that lives on the training device: no DataLoader, no workers,
no host-to-device copies. For datasets that fit in device memory (digits, MNIST), where data movement and
per-item overhead, not arithmetic, bound the speed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Sampler

if TYPE_CHECKING:
    from simlearn.data.in_memory import TensorImageDataset


class DeviceBatchLoader:
    """Iterates over ``dataset`` in batches, in the order of ``sampler`` (all items in order when None).

    Under DDP each rank takes its own shard as ``DistributedSampler`` does: the order is padded by repeating its
    first items to a multiple of the world size and rank ``r`` takes items ``r, r + world, …`` (evaluation drops the
    repeats again by dataset index). ``shard_whole_batches`` shards by whole batches instead, for samplers whose
    batches are built as a unit (PML's ``MPerClassSampler``). Lightning calls ``sampler.set_epoch`` every epoch.
    """

    def __init__(
        self,
        dataset: TensorImageDataset,
        batch_size: int,
        sampler: Sampler[int] | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        shard_whole_batches: bool = False,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = sampler
        self.batch_sampler = None  # Lightning inspects both, like a DataLoader's
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.shard_whole_batches = shard_whole_batches

    def _positions(self) -> torch.Tensor:
        n = len(self.dataset)
        order = torch.arange(n) if self.sampler is None else torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
        if self.world_size > 1:
            if self.shard_whole_batches:
                per_rank = len(order) // (self.batch_size * self.world_size)
                batches = order[: per_rank * self.world_size * self.batch_size].view(-1, self.batch_size)
                order = batches[self.rank :: self.world_size].flatten()
            else:
                total = -(-len(order) // self.world_size) * self.world_size
                order = torch.cat([order, order[: total - len(order)]])[self.rank :: self.world_size]
        return order.to(self.dataset.images.device)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        positions = self._positions()
        for start in range(0, len(positions), self.batch_size):
            chunk = positions[start : start + self.batch_size]
            if self.drop_last and len(chunk) < self.batch_size:
                return
            yield self.dataset.__getitems__(chunk)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        if self.world_size > 1:
            n = n // self.world_size if self.shard_whole_batches else -(-n // self.world_size)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
