"""Image datasets small enough to hold in memory as one tensor, with seeded per-class splits."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from simlearn.data.device_loader import DeviceBatchLoader
from simlearn.data.samplers import EpochSeededRandomSampler
from simlearn.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class ImageTensors:
    """A whole dataset as tensors: images (N, C, H, W) and one integer tensor per label field."""

    images: torch.Tensor
    fields: dict[str, torch.Tensor]
    class_names: list[str]
    #: Per-item "train"/"test" flag when the source has an official test split (MNIST); None → split it ourselves.
    is_test: torch.Tensor | None = None


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dataset already returns whole batches (``__getitems__``), so collation has nothing to do."""
    return batch


class TensorImageDataset(Dataset):
    """Items of an in-memory image tensor as dicts ``{"image", "index", <label fields>}``.

    Images stay in their stored dtype (uint8 for MNIST) and are scaled and normalised per batch, which is
    cheaper than decoding or converting item by item.
    """

    def __init__(
        self,
        images: torch.Tensor,
        fields: Mapping[str, torch.Tensor],
        indices: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        scale: float,
    ) -> None:
        self.images = images
        self.fields = dict(fields)
        self.indices = indices
        channels = images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)
        self.scale = scale

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        index = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        images = (self.images[index].float() / self.scale - self.mean) / self.std
        return {"image": images, "index": index, **{k: v[index] for k, v in self.fields.items()}}

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}

    def to(self, device: torch.device | str) -> TensorImageDataset:
        """The same items with every tensor on ``device`` (tensors already there are shared, not copied)."""
        moved = copy.copy(self)
        moved.images = self.images.to(device)
        moved.fields = {key: value.to(device) for key, value in self.fields.items()}
        moved.indices, moved.mean, moved.std = (t.to(device) for t in (self.indices, self.mean, self.std))
        return moved

    def labels(self, field: str) -> torch.Tensor:
        return self.fields[field][self.indices]


class InMemoryImageDataModule(pl.LightningDataModule):
    """Base for datasets held as one tensor: seeded stratified splits, optional class selection and caps,
    PML's ``MPerClassSampler`` for metric losses.

    Subclasses implement :meth:`load` and set ``name``; everything else is shared.
    """

    name = "in_memory"

    def __init__(
        self,
        label_field: str,
        image_size: int,
        channels: int,
        num_classes: int,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        classes: Sequence[str | int] | None = None,
        max_train: int | None = None,
        max_val: int | None = None,
        max_test: int | None = None,
        m_per_class: int | None = None,
        num_workers: int = 0,
        on_device: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_batches_and_fractions(batch_size, eval_batch_size, val_fraction, test_fraction)
        self.label_field = label_field
        self.image_size = image_size
        self.channels = channels
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.classes = None if classes is None else [str(c) for c in classes]
        self.limits = {"train": max_train, "val": max_val, "test": max_test}
        self.m_per_class = m_per_class
        self.num_workers = num_workers
        self.on_device = on_device
        self.seed = seed
        self.class_names: list[str] = []
        self.datasets: dict[str, TensorImageDataset] = {}

    # -- to implement --------------------------------------------------------------------------------------
    def load(self) -> ImageTensors:
        """Read the whole dataset into tensors."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------------------
    @property
    def label_fields(self) -> list[str]:
        """Names of the label fields every batch carries."""
        return list(next(iter(self.datasets.values())).fields) if self.datasets else []

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        data = self.load()
        self._check_shape(data.images)
        if self.label_field not in data.fields:
            raise UserError(
                f"data.label_field={self.label_field!r} is not a label field of data '{self.name}'; "
                f"valid: {sorted(data.fields)}."
            )
        self.class_names = data.class_names
        if len(self.class_names) != self.num_classes:
            raise UserError(
                f"data.num_classes={self.num_classes} but data '{self.name}' has {len(self.class_names)} classes "
                f"in field {self.label_field!r}; set data.num_classes={len(self.class_names)}."
            )
        labels = data.fields[self.label_field]
        keep = self._selected(labels)
        splits = self._split(labels, keep, data.is_test)
        # a source with its own test split (MNIST) decides which classes are tested; only val is ours to check
        test_fraction = self.test_fraction if data.is_test is None else 0.0
        warn_small_classes(labels, keep, splits, self.class_names, self.name, self.val_fraction, test_fraction)
        for split, index in splits.items():
            splits[split] = cap_split(index, self.limits[split], self.seed, split)
        self._check_classes(labels, splits)
        scale = 255.0 if data.images.dtype == torch.uint8 else 1.0
        train_images = data.images[splits["train"]].float() / scale
        mean = train_images.mean(dim=(0, 2, 3)).tolist()
        std = train_images.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
        self.datasets = {
            split: TensorImageDataset(data.images, data.fields, index, mean, std, scale)
            for split, index in splits.items()
        }

    def preprocessing(self) -> dict[str, Any]:
        """How to turn a raw image into model input, stored in checkpoints for embedding new image files:
        resize to ``image_size`` with ``channels`` channels, scale pixel values to [0, 1], then normalise with the
        training split's per-channel ``mean`` and ``std``."""
        train = self.datasets["train"]
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": train.mean.flatten().tolist(),
            "std": train.std.flatten().tolist(),
        }

    def _check_shape(self, images: torch.Tensor) -> None:
        channels, height, width = images.shape[1:]
        if (channels, height, width) != (self.channels, self.image_size, self.image_size):
            raise UserError(
                f"data '{self.name}' holds {channels}×{height}×{width} images but the config says "
                f"data.channels={self.channels}, data.image_size={self.image_size}; set them to "
                f"data.channels={channels} data.image_size={height}."
            )

    def _selected(self, labels: torch.Tensor) -> torch.Tensor:
        if self.classes is None:
            return torch.ones_like(labels, dtype=torch.bool)
        unknown = [c for c in self.classes if c not in self.class_names]
        if unknown:
            raise UserError(
                f"data.classes names classes {unknown} that data '{self.name}' does not have; "
                f"valid: {self.class_names}."
            )
        wanted = torch.tensor([self.class_names.index(c) for c in self.classes])
        return torch.isin(labels, wanted)

    def _split(self, labels: torch.Tensor, keep: torch.Tensor, is_test: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return stratified_split(labels, keep, self.val_fraction, self.test_fraction, self.seed, is_test)

    def _check_classes(self, labels: torch.Tensor, splits: dict[str, torch.Tensor]) -> None:
        check_split_classes(labels, splits, self.class_names, self.name, self.val_fraction)

    def _loader(self, split: str, shuffle: bool) -> DataLoader | DeviceBatchLoader:
        dataset = self.datasets[split]
        train = split == "train"
        if train and self.m_per_class:
            sampler = self._m_per_class_sampler(dataset)
        else:
            sampler = EpochSeededRandomSampler(len(dataset), seed=self.seed) if shuffle else None
        batch_size = self.batch_size if train else self.eval_batch_size
        drop_last = bool(train and self.m_per_class)
        if self.on_device:
            trainer = self.trainer
            return DeviceBatchLoader(
                self._device_dataset(split),
                batch_size,
                sampler=sampler,
                drop_last=drop_last,
                rank=trainer.global_rank if trainer else 0,
                world_size=trainer.world_size if trainer else 1,
                shard_whole_batches=drop_last,
            )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            persistent_workers=self.num_workers > 0,
        )

    def _device_dataset(self, split: str) -> TensorImageDataset:
        """The split with its tensors on the training device; the image tensor is moved once for all splits."""
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        cached = getattr(self, "_on_device", None)
        if cached is None or cached[0] != device:
            source = self.datasets["train"]
            cached = (device, source.images.to(device), {k: v.to(device) for k, v in source.fields.items()})
            self._on_device = cached
        moved = copy.copy(self.datasets[split])
        moved.images, moved.fields = cached[1], cached[2]
        return moved.to(device)  # indices, mean, std; the shared tensors are already there

    def _m_per_class_sampler(self, dataset: TensorImageDataset):
        return m_per_class_sampler(dataset.labels(self.label_field), self.m_per_class, self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


# -- split and sampling helpers shared by every data module (in memory or read from files) --------------------------
def check_batches_and_fractions(
    batch_size: int, eval_batch_size: int, val_fraction: float, test_fraction: float
) -> None:
    """Reject batch sizes below 1 and split fractions that are out of [0, 1) or leave nothing to train on."""
    for key, value in {"batch_size": batch_size, "eval_batch_size": eval_batch_size}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"data.{key} must be a positive integer, got {value!r}.")
    for key, value in {"val_fraction": val_fraction, "test_fraction": test_fraction}.items():
        if not 0.0 <= value < 1.0:
            raise UserError(f"data.{key} must be in [0, 1), got {value!r}.")
    if val_fraction + test_fraction >= 1.0:
        raise UserError(
            f"data.val_fraction + data.test_fraction must leave items to train on, got "
            f"{val_fraction} + {test_fraction} >= 1."
        )


def split_generator(seed: int, split: str) -> torch.Generator:
    """The generator that draws the capped subset (``data.max_<split>``) of one split."""
    return torch.Generator().manual_seed(seed * 1000 + SPLITS.index(split))


def stratified_split(
    labels: torch.Tensor,
    keep: torch.Tensor,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    is_test: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per class: a seeded permutation cut into test / val / train (test from the source when it has one).

    ``labels`` holds one class id per item and ``keep`` marks the items to split; returns the sorted item indices of
    each split. Each class contributes ``round(n × fraction)`` items to val and test, so the splits are stratified,
    and the result depends only on the labels and the seed.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for label in labels[keep].unique().tolist():
        members = torch.nonzero(keep & (labels == label)).flatten().numpy()
        if is_test is not None:
            parts["test"].append(members[is_test[members].numpy()])
            members = members[~is_test[members].numpy()]
            n_test = 0
            n_val = round(len(members) * val_fraction)
        else:
            n_test = round(len(members) * test_fraction)
            n_val = round(len(members) * val_fraction)
        members = rng.permutation(members)
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    return {
        split: torch.from_numpy(np.sort(np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64))).long()
        for split, chunks in parts.items()
    }


def min_class_size(fraction: float) -> int:
    """The fewest items a class needs for the seeded split to give it at least one item of a split that takes
    ``fraction`` of each class (``round(n × fraction) ≥ 1``; Python rounds 0.5 to 0)."""
    n = max(1, math.floor(0.5 / fraction))
    while round(n * fraction) < 1:
        n += 1
    return n


def warn_small_classes(
    labels: torch.Tensor,
    seeded: torch.Tensor,
    splits: Mapping[str, torch.Tensor],
    class_names: Sequence[str],
    name: str,
    val_fraction: float,
    test_fraction: float,
) -> list[str]:
    """Warn once about the classes that the seeded split left out of val or test because they have too few items.

    ``seeded`` marks the items the seeded split was given and ``splits`` holds every split before ``data.max_*``
    caps (items a source assigns to a split count too, so a class that reaches test that way is not reported).
    Such a class is trained on but never evaluated there, so its absence would otherwise go unnoticed in the
    metrics. Returns the names of the reported classes.
    """
    needs = {split: min_class_size(f) for split, f in (("val", val_fraction), ("test", test_fraction)) if f > 0}
    seeded_classes = labels[seeded].unique().tolist()
    missing: dict[str, list[str]] = {}
    for split in needs:
        present = set(labels[splits[split]].unique().tolist())
        for label in seeded_classes:
            if label not in present:
                missing.setdefault(class_names[label], []).append(split)
    if not missing:
        return []
    names = sorted(missing)
    # the classes drop out of the val/test metrics as silently as lone queries are left out of retrieval
    # (num_lone_queries), so say once how many and which
    everywhere = all(len(missing[n]) == len(needs) for n in names)
    where = (
        "trained on only"
        if everywhere
        else "trained on but missing from "
        + ", ".join(f"{split}: {_some([n for n in names if split in missing[n]])}" for split in needs)
    )
    log.warning(
        "data '%s': %d %s too few images to appear in val/test (need %s): %s; %s %s. Add images or leave %s "
        "out with data.classes.",
        name,
        len(names),
        "class has" if len(names) == 1 else "classes have",
        ", ".join(f"≥ {n} for {split}" for split, n in needs.items()),
        _some(names),
        "it is" if len(names) == 1 else "they are",
        where,
        "it" if len(names) == 1 else "them",
    )
    return names


def _some(names: Sequence[str], limit: int = 20) -> str:
    """At most ``limit`` names for a log line (a thousand one-image classes would flood it)."""
    return str(list(names[:limit])) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def cap_split(index: torch.Tensor, limit: int | None, seed: int, split: str) -> torch.Tensor:
    """A seeded random subset of at most ``limit`` items of a split (all of them when ``limit`` is None), sorted."""
    if limit is None:
        return index
    return index[torch.randperm(len(index), generator=split_generator(seed, split))[:limit]].sort().values


def check_split_classes(
    labels: torch.Tensor, splits: Mapping[str, torch.Tensor], class_names: Sequence[str], name: str, val_fraction: float
) -> None:
    """Every split needs at least 2 classes (an empty val split is fine when ``val_fraction`` is 0)."""
    for split, index in splits.items():
        present = labels[index].unique()
        if split == "val" and len(index) == 0 and val_fraction == 0:
            continue
        if len(present) < 2:
            names = [class_names[i] for i in present.tolist()]
            raise UserError(
                f"the {split} split of data '{name}' has {len(index)} items in {len(present)} class(es) "
                f"{names}; similarity learning and retrieval need at least 2 classes. Select more classes "
                f"(data.classes) or raise data.max_{split}."
            )


def m_per_class_sampler(labels: torch.Tensor, m: int, batch_size: int):
    """PML's ``MPerClassSampler`` (m items of each class per batch), or a UserError when m does not fit the batch."""
    from pytorch_metric_learning.samplers import MPerClassSampler

    num_classes = len(labels.unique())
    if batch_size % m or m * num_classes < batch_size:
        raise UserError(
            f"data.m_per_class={m} does not fit data.batch_size={batch_size} with {num_classes} classes: "
            f"the batch size must be a multiple of m_per_class and at most m_per_class × classes "
            f"({m * num_classes}). Example: data.m_per_class={max(1, batch_size // num_classes)} with "
            f"data.batch_size={max(1, batch_size // num_classes) * num_classes}."
        )
    return MPerClassSampler(labels.numpy(), m=m, batch_size=batch_size, length_before_new_iter=len(labels))
