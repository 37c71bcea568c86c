"""Image datasets small enough to hold in memory as one tensor (digits, MNIST, toy animals).

A source returns :class:`ImageTensors`; :class:`~simlearn.data.base.EmbeddingDataModule` splits them. Images stay in
their stored dtype (uint8 for MNIST) and are scaled and normalised per batch, which is cheaper than converting item
by item; every split (the probe split too) indexes the same tensor, so ``data.on_device`` moves it once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from simlearn.data.base import EmbeddingDataModule, Items, Preprocessing, SplitDataset
from simlearn.errors import UserError

__all__ = ["ImageTensors", "InMemoryImageDataModule", "TensorImageDataset", "collate_batch"]

#: The in-memory sources' base is the one base of every data module; the name stays for code that imports it.
InMemoryImageDataModule = EmbeddingDataModule


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dataset already returns whole batches (``__getitems__``), so collation has nothing to do."""
    return batch


class TensorImageDataset(SplitDataset):
    """Items of an in-memory image tensor as dicts ``{"image", "index", <label fields>}``, scaled to [0, 1] (by
    ``scale``), optionally augmented item by item (``augment``, training only), then normalised with ``mean``/``std``.
    """

    collate = staticmethod(collate_batch)

    def __init__(
        self,
        images: torch.Tensor,
        fields: Mapping[str, torch.Tensor],
        indices: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        scale: float,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.images = images
        self.fields = dict(fields)
        self.indices = indices
        channels = images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)
        self.scale = scale
        self.augment = augment

    def __getitems__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        index = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        images = self.images[index].float() / self.scale
        if self.augment is not None:
            images = torch.stack([self.augment(image) for image in images])
        images = (images - self.mean) / self.std
        return {"image": images, "index": index, **{k: v[index] for k, v in self.fields.items()}}

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}

    def pixels(self, index: Sequence[int]) -> torch.Tensor:
        """The stored images of the item numbers ``index`` (a batch's ``index`` values) as people see them: (N, H,
        W, C) uint8, without augmentation or normalisation (what a contact sheet or a served thumbnail shows)."""
        images = self.images[torch.as_tensor(index, dtype=torch.long)].float().cpu() / self.scale
        return (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    def to(self, device: torch.device | str) -> TensorImageDataset:
        """The same items with every tensor on ``device`` (tensors already there are shared, not copied)."""
        moved = copy.copy(self)
        moved.images = self.images.to(device)
        moved.fields = {key: value.to(device) for key, value in self.fields.items()}
        moved.indices, moved.mean, moved.std = (t.to(device) for t in (self.indices, self.mean, self.std))
        return moved


@dataclass(kw_only=True)
class ImageTensors(Items):
    """A whole dataset as tensors: ``images`` (N, C, H, W), uint8 (0..255) or float (0..1), plus :class:`Items`'
    label fields, their names and the splits fixed per item (MNIST's official test images)."""

    images: torch.Tensor

    in_memory = True
    drop_incomplete_batch = False

    @property
    def scale(self) -> float:
        """What divides the stored pixel values to bring them to [0, 1]."""
        return 255.0 if self.images.dtype == torch.uint8 else 1.0

    def check(self, datamodule: EmbeddingDataModule) -> None:
        channels, height, width = self.images.shape[1:]
        if (channels, height, width) != (datamodule.channels, datamodule.image_size, datamodule.image_size):
            raise UserError(
                f"data '{datamodule.name}' holds {channels}×{height}×{width} images but the config says "
                f"data.channels={datamodule.channels}, data.image_size={datamodule.image_size}; set them to "
                f"data.channels={channels} data.image_size={height}."
            )

    def normalisation(self, train: torch.Tensor) -> tuple[list[float], list[float]]:
        """The training split's per-channel mean and std (of the images scaled to [0, 1])."""
        images = self.images[train].float() / self.scale
        return images.mean(dim=(0, 2, 3)).tolist(), images.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()

    def dataset(
        self, indices: torch.Tensor, preprocessing: Preprocessing, augment: Sequence[Callable]
    ) -> TensorImageDataset:
        # the augmentations see one float image in [0, 1] at a time; a crop of another size is brought back to size
        size = preprocessing.image_size
        pipeline = v2.Compose([*augment, v2.Resize(size, antialias=True), v2.CenterCrop(size)]) if augment else None
        return TensorImageDataset(
            self.images, self.fields, indices, preprocessing.mean, preprocessing.std, self.scale, pipeline
        )
