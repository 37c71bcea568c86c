"""One LightningDataModule for every dataset: a *source* says what its items are, :class:`EmbeddingDataModule` does
the rest, the same way for every source.

A source is a subclass that implements :meth:`EmbeddingDataModule.load` and returns its items as :class:`Items`:
in-memory image tensors (:class:`~simlearn.data.in_memory.ImageTensors`: digits, MNIST, toy animals), a table of
image files (:class:`~simlearn.data.image_files.FileTable`: image folders, CSVs, AwA2) or of file pairs
(:class:`~simlearn.data.pairs.PairTable`). Items carry one integer code per item for each label field, the names of
the codes, and optionally a split fixed per item. The base then does, for every source (the class selection, probes,
split, query/gallery roles and caps are one pure function of the labels, the fixed splits and the options,
:func:`~simlearn.data.split_plan.plan_splits`, and :meth:`~EmbeddingDataModule.setup` builds the datasets from its
plan):

* class selection: ``classes`` picks and orders the trained classes of ``label_field``, labelled 0..C−1 in that order
  (null: every class, in the source's order), and ``num_classes`` must equal C. Only ``label_field`` is relabelled;
  the other label fields keep the source's codes;
* probe classes (``probe_classes``): kept out of train/val/test, labelled C, C+1, …, served by
  :meth:`~EmbeddingDataModule.probe_dataloader` (normalised like the training images);
* the split (``split_by``): ``item``, the seeded per-class split (:func:`~simlearn.data.splits.stratified_split`:
  every class in every split, closed-set retrieval), or ``class``, whole classes to train / val / test
  (:func:`~simlearn.data.splits.class_split`: seeded, or listed by ``train_classes``/``val_classes``/``test_classes``,
  or the source's official split), so that the test classes are never trained on. With a class split the labels
  are ordered train classes (0..T−1, what classifier losses are sized for: ``num_classes`` = T), then val, then
  test classes. Items with a fixed split keep it; a source may fix "query" and "gallery" items (In-Shop): the test
  split is then both, with a field ``is_gallery`` (1 gallery, 0 query, −1 other splits) that the evaluator
  searches queries against the gallery by. Then the warning about classes too small for val/test, the caps
  ``max_train``/``max_val``/``max_test`` and the checks that every split has two classes and every query a gallery
  item of its class; :meth:`~EmbeddingDataModule.split_summary` (``splits.json``) says what each split holds;
* labels (``labels``): ``train`` gives the training split's label fields to the loss; ``none`` gives it none (the
  training batches hold the images and their ``index`` only: a label-free loss), the other splits keeping theirs for
  evaluation. A source without labels (:attr:`Items.labelled` false: an image folder without class folders) trains
  and evaluates without them: split by item (seeded), evaluated by the label-free metrics only. ``label_fraction``
  keeps a seeded share of each class's training items (at least one per class) and drops the others from training;
* loaders: shuffled by :class:`~simlearn.data.samplers.EpochSeededRandomSampler` or drawn by PML's
  ``MPerClassSampler`` (``m_per_class``) for training, in order for evaluation; ``on_device`` (in-memory data) draws
  batches from tensors on the training device instead of a DataLoader;
* augmentation of the training split (``augment``), or with ``views`` ≥ 2 that many views of each training image,
  made in batches on the training device by ``view_augment`` (:mod:`simlearn.data.views`, in
  :meth:`~EmbeddingDataModule.on_after_batch_transfer`: the same for every source), and
  :meth:`~EmbeddingDataModule.preprocessing`: image size,
  channels and the mean/std that normalise every image (measured on the training split of in-memory data unless
  given; ImageNet's for image files unless given).

Callers use the interface declared here (``datasets``, ``class_names``, ``probe_class_names``, ``label_names``,
``dataset_fields()`` and ``dataset_class_names`` (the source's own label values, for every file that carries labels),
``label_field``, ``label_fields``, ``preprocessing()``, ``loader()``, ``probe_dataloader()``, and
:meth:`SplitDataset.paths_of` for the files of items) rather than probing attributes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from simlearn.data.device_loader import DeviceBatchLoader
from simlearn.data.samplers import EpochSeededRandomSampler
from simlearn.data.split_plan import SplitOptions, SplitPlan, plan_splits
from simlearn.data.splits import (
    check_batches_and_fractions,
    check_m_per_class,
    check_split_classes,
    m_per_class_sampler,
    some_names,
)
from simlearn.data.views import ViewMaker, view_transforms
from simlearn.errors import UserError
from simlearn.fields import GALLERY_FIELD, NOT_LABEL_FIELDS
from simlearn.retrieval.vectors import as_numpy

#: ``data.labels``: how training uses the labels (``train``: the loss reads them; ``none``: it reads none).
LABEL_USES = ("train", "none")

#: What :meth:`EmbeddingDataModule.loader` returns: a DataLoader, or batches drawn on the device (``on_device``).
Loader = DataLoader | DeviceBatchLoader


#: The evaluation crop of image files (:class:`Preprocessing`): the share of the resized image kept, the resampling;
#: left out of its record when unset.
CROP_KEYS = ("crop_pct", "interpolation")


@dataclass(frozen=True)
class Preprocessing:
    """How a raw image becomes model input: resize to ``image_size`` with ``channels`` channels, scale pixel values to
    [0, 1], then normalise each channel with ``mean`` and ``std``. Stored in checkpoints (``as_dict``) so that new
    image files are embedded like the training data."""

    image_size: int
    channels: int
    mean: list[float]
    std: list[float]
    #: image files only: the share of the resized image that the centre crop keeps, and the resampling filter (None:
    #: the full square, bilinear; see :func:`simlearn.data.image_files.image_transform`)
    crop_pct: float | None = None
    interpolation: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The record stored in checkpoints; the crop keys only when set (a record without them means the full
        square, bilinear, as for the checkpoints written before they existed)."""
        record = asdict(self)
        return {key: value for key, value in record.items() if value is not None or key not in CROP_KEYS}


def channel_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[list[float], list[float]]:
    """``mean`` and ``std`` for ``channels`` channels: RGB statistics (ImageNet's) average to one value for grey
    images; any other mismatch is a UserError."""
    mean, std = list(mean), list(std)
    if channels == 1 and len(mean) == 3 and len(std) == 3:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    if len(mean) != channels or len(std) != channels:
        raise UserError(
            f"data.mean and data.std need one value per channel ({channels}), got {mean} and {std}; "
            f"e.g. data.mean=[0.5] data.std=[0.25] for grey images."
        )
    return mean, std


#: Resampling filters a backbone may declare (timm's pretrained config ``interpolation``) that resize tensors.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


def check_crop(crop_pct: Any, interpolation: Any) -> None:
    """One :class:`UserError` for a ``data.crop_pct`` outside (0, 1] or an ``interpolation`` no resize has."""
    if crop_pct is not None and (isinstance(crop_pct, bool) or not 0 < crop_pct <= 1):
        raise UserError(
            f"data.crop_pct must be in (0, 1] (the share of the resized image the centre crop keeps, e.g. 0.875) or "
            f"null (the backbone's, else 1), got {crop_pct!r}."
        )
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise UserError(
            f"data.interpolation must be one of {', '.join(INTERPOLATIONS)} or null, got {interpolation!r}."
        )


def augment_transforms(augment: Any) -> list[Callable]:
    """The list of training transforms from ``data.augment``: None, a list, or a mapping with ``transforms``."""
    if augment is None:
        return []
    if isinstance(augment, Mapping):
        augment = augment.get("transforms") or []
    if isinstance(augment, str) or not isinstance(augment, Sequence):
        raise UserError(
            f"data.augment must be a list of transforms or a config of configs/augment/ (augment=none|light|strong), "
            f"got {augment!r}."
        )
    for transform in augment:
        if not callable(transform):
            raise UserError(
                f"data.augment holds {transform!r}, which is not a transform; give each entry a _target_ such as "
                f"torchvision.transforms.v2.RandomHorizontalFlip (see configs/augment/light.yaml)."
            )
    return list(augment)


def encode(values: Sequence[str], first: Sequence[str] = (), numeric: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Integer codes of text values and the names of the codes: the names in ``first`` take codes 0, 1, … in their
    order, the other distinct values follow sorted as text, or as numbers when ``numeric`` and every one is a number
    (so that a column of sizes 2, 10 keeps 2 before 10)."""
    names = list(first)
    rest = set(values) - set(names)

    def number(value: str) -> float | None:
        try:
            return float(value)
        except ValueError:
            return None

    as_numbers = numeric and all(number(v) is not None for v in rest)
    names += sorted(rest, key=lambda v: (number(v), v) if as_numbers else v)
    code = {name: i for i, name in enumerate(names)}
    return torch.tensor([code[v] for v in values], dtype=torch.long), names


class SplitDataset(Dataset):
    """The items of one split. ``indices`` are the source's item numbers of this split (a batch's ``index``) and
    ``fields`` hold one code per *source* item for each label field, so every split shares them."""

    fields: dict[str, torch.Tensor]
    indices: torch.Tensor
    #: Turns the items a DataLoader fetched into a batch (a dataset with ``__getitems__`` returns whole batches).
    collate: Callable = staticmethod(default_collate)

    def __len__(self) -> int:
        return len(self.indices)

    def labels(self, field: str) -> torch.Tensor:
        """The codes of ``field`` of this split's items, in order."""
        return self.fields[field][self.indices]

    def paths_of(self, index: Sequence[int]) -> list[str] | None:
        """The image file of each item number in ``index`` (a batch's ``index`` values); None for data that is not
        read from files."""
        return None


@dataclass(kw_only=True)
class Items:
    """Everything a source holds, before any split: per label field one integer code per item (``fields``), the
    names of the codes (``names``, per field; a field without names is named by its codes) and, optionally, a split
    fixed per item (``split``: "train", "val", "test", or None to leave the item to the seeded split)."""

    fields: dict[str, torch.Tensor]
    names: dict[str, list[str]] = field(default_factory=dict)
    split: Sequence[str | None] | None = None
    #: False for items without labels (an image folder without class folders): ``fields`` then holds one placeholder
    #: class that only the seeded split reads; no split carries it
    labelled: bool = True

    #: Whether the items are tensors in memory, which ``data.on_device`` can move to the training device.
    in_memory: ClassVar[bool] = False
    #: Whether the label field names classes (``split_by=class`` splits them, the seeded split warns about those too
    #: small for val/test); pairs have none.
    has_classes: ClassVar[bool] = True
    #: Whether training drops its incomplete last batch when there is a full one (a batch of one item breaks batch
    #: norm). In-memory data keeps it, as it always has, so that the digits and MNIST results stay the same.
    drop_incomplete_batch: ClassVar[bool] = True

    def __len__(self) -> int:
        return len(next(iter(self.fields.values())))

    def names_of(self, field: str) -> list[str]:
        """The names of the codes 0, 1, … of ``field``."""
        if field in self.names:
            return list(self.names[field])
        codes = self.fields[field]
        return [str(c) for c in range(int(codes.max()) + 1 if len(codes) else 0)]

    def check(self, datamodule: EmbeddingDataModule) -> None:
        """Reject items that do not fit the data's configured image size or channels (nothing to check here)."""

    def normalisation(self, train: torch.Tensor) -> tuple[list[float], list[float]]:
        """Per-channel mean and std for a config that gives none; ``train`` holds the training items' numbers."""
        raise NotImplementedError

    def dataset(self, indices: torch.Tensor, preprocessing: Preprocessing, augment: Sequence[Callable]) -> SplitDataset:
        """The items ``indices`` as a dataset, preprocessed, with the ``augment`` transforms (training only)."""
        raise NotImplementedError


class EmbeddingDataModule(pl.LightningDataModule):
    """The data module of every dataset (see the module docstring): seeded splits, class selection, probe classes,
    caps, samplers, augmentation, preprocessing and loaders for the items a source returns from :meth:`load`.

    After :meth:`setup`: ``datasets`` maps each split ("train", "val", "test", and "probe" with probe classes) to a
    :class:`SplitDataset`; ``class_names`` names the trained labels 0..C−1 and ``probe_class_names`` the probe labels
    C, C+1, … of ``label_field``; ``label_fields`` lists the fields every batch carries.
    """

    #: The data's name in messages (``data=<name>``).
    name = "data"
    #: How a class name of the config is spelled in the source (AwA2 joins words with '+').
    class_name: Callable[[Any], str] = staticmethod(str)

    def __init__(
        self,
        label_field: str = "label",
        image_size: int = 224,
        channels: int = 3,
        num_classes: int | None = None,
        classes: Sequence[str | int] | None = None,
        split_by: str = "item",
        train_classes: Sequence[str | int] | None = None,
        val_classes: Sequence[str | int] | None = None,
        test_classes: Sequence[str | int] | None = None,
        probe_classes: Sequence[str | int] | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        max_train: int | None = None,
        max_val: int | None = None,
        max_test: int | None = None,
        m_per_class: int | None = None,
        num_workers: int = 0,
        on_device: bool = False,
        seed: int = 0,
        augment: Any = None,
        views: int = 1,
        view_augment: Any = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_pct: float | None = None,
        interpolation: str | None = None,
        labels: str = "train",
        label_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        if labels not in LABEL_USES:
            raise UserError(
                f"data.labels must be one of {', '.join(LABEL_USES)}, got {labels!r}: train (the loss reads the "
                f"training labels) or none (training reads no label; the labels, if any, evaluate only)."
            )
        if labels == "none" and label_fraction != 1:
            raise UserError(
                f"data.label_fraction={label_fraction} keeps some training labels, but data.labels=none trains with "
                f"none; drop one of them (pre-train with data.labels=none, then fine-tune with data.label_fraction "
                f"and init_from=<that run's checkpoint>)."
            )
        if labels == "none" and m_per_class:
            raise UserError(
                f"data.m_per_class={m_per_class} draws batches by class, but data.labels=none trains without labels; "
                f"set data.m_per_class=null."
            )
        check_crop(crop_pct, interpolation)
        check_batches_and_fractions(batch_size, eval_batch_size, val_fraction, test_fraction)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise UserError(f"data.num_workers must be an integer ≥ 0, got {num_workers!r}.")
        if (mean is None) != (std is None):
            raise UserError("data.mean and data.std go together: give both, or neither to use the data's defaults.")
        self.label_field = label_field
        self.image_size = image_size
        self.channels = channels
        self.num_classes = num_classes
        self.classes = None if classes is None else [self.class_name(c) for c in classes]
        self.split_by = split_by
        listed = {"train": train_classes, "val": val_classes, "test": test_classes}
        self.split_classes = {k: [self.class_name(c) for c in v] for k, v in listed.items() if v is not None}
        self.probe_classes = [self.class_name(c) for c in probe_classes or []]
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.limits = {"train": max_train, "val": max_val, "test": max_test}
        self.m_per_class = m_per_class
        self.num_workers = num_workers
        self.on_device = on_device
        self.seed = seed
        self.augment = augment_transforms(augment)
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise UserError(
                f"data.views must be an integer ≥ 1 (1: one image per item, as always; 2 or more: views of each "
                f"training image for a label-free loss), got {views!r}; e.g. data.views=2."
            )
        self.views = views
        #: The transforms of the views (``views`` ≥ 2), each a :class:`~simlearn.data.views.ViewTransform`.
        self.view_transforms = view_transforms(view_augment) if views > 1 else []
        #: Makes the views of a training batch on its device (set by :meth:`setup` when ``views`` ≥ 2).
        self.view_maker: ViewMaker | None = None
        self.mean = None if mean is None else list(mean)
        self.std = None if std is None else list(std)
        self.crop_pct, self.interpolation = crop_pct, interpolation
        self.labels = labels
        self.label_fraction = label_fraction
        self.split_options()  # the split options are checked now, not when the data is set up
        #: Names of the labels 0..C−1 of ``label_field`` (set by :meth:`setup`): every class of train/val/test; with
        #: ``split_by=class`` the training classes first (0..T−1), then the val and the test classes.
        self.class_names: list[str] = []
        #: Names of the probe labels C, C+1, … (set by :meth:`setup`; empty without probe classes).
        self.probe_class_names: list[str] = []
        #: The source's names of the codes 0, 1, … of ``label_field`` (set by :meth:`setup`): what the label arrays
        #: of written files hold (:meth:`dataset_fields`), whatever the split or class selection.
        self.dataset_class_names: list[str] = []
        #: Where the items went (set by :meth:`setup`): :func:`~simlearn.data.split_plan.plan_splits`' plan, which
        #: the datasets, the class names and the mapping of training labels back to the source's are made from.
        self.split_plan: SplitPlan | None = None
        #: Split name → its items (set by :meth:`setup`).
        self.datasets: dict[str, SplitDataset] = {}
        self._items: Items | None = None
        #: False once :meth:`setup` loaded a source without labels
        self.labelled = True
        self._preprocessing: Preprocessing | None = None
        self._device_tensors: dict[tuple[int, str], tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}

    # -- what a source implements -----------------------------------------------------------------------------------
    def load(self) -> Items:
        """Every item of the source (a source may read only those of :meth:`wanted_classes`)."""
        raise NotImplementedError

    def usable(self, items: Items, wanted: torch.Tensor) -> torch.Tensor:
        """Which of the ``wanted`` items can be used (file sources leave out files that cannot be read)."""
        return wanted

    def check_splits(self, items: Items, labels: torch.Tensor, splits: Mapping[str, torch.Tensor]) -> None:
        """Reject splits that cannot be trained or evaluated: every split needs two classes."""
        check_split_classes(
            labels, splits, self.label_names, self.name, self.val_fraction, by_class=self.split_by == "class"
        )

    # -- the interface callers use ----------------------------------------------------------------------------------
    def split_options(self) -> SplitOptions:
        """The config's split options as :func:`~simlearn.data.split_plan.plan_splits` takes them (checked: a
        UserError for a bad combination)."""
        return SplitOptions(
            name=self.name,
            split_by=self.split_by,
            classes=None if self.classes is None else tuple(self.classes),
            probe_classes=tuple(self.probe_classes),
            split_classes={split: tuple(chosen) for split, chosen in self.split_classes.items()},
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            limits=dict(self.limits),
            seed=self.seed,
            label_fraction=self.label_fraction,
        )

    @property
    def label_names(self) -> list[str]:
        """Names of the labels 0, 1, … of ``label_field``: the trained classes, then the probe classes."""
        return [*self.class_names, *self.probe_class_names]

    def dataset_fields(self, fields: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The label fields of a batch or an embedded split as the dataset holds them, for every file that carries
        labels: ``label_field`` mapped back from the training labels (0..C−1 in the trained classes' order, probes
        C, C+1, …) to the source's codes, which :attr:`dataset_class_names` names; the other fields unchanged (they
        are never relabelled). The training labels are the classifier's internal indices: under ``split_by=class``
        or a ``classes`` selection they differ from the source's codes (the digit 5 is trained as label 8)."""
        arrays = {name: as_numpy(values) for name, values in fields.items()}
        if self.label_field in arrays:
            labels = arrays[self.label_field].astype(np.int64)
            code_of_label = self.split_plan.code_of_label if self.split_plan else np.zeros(0, dtype=np.int64)
            if len(labels) and (labels.min() < 0 or labels.max() >= len(code_of_label)):
                raise ValueError(
                    f"labels of {self.label_field!r} range over {labels.min()}..{labels.max()}, but this data has "
                    f"{len(code_of_label)} training labels; were these fields made by this data module?"
                )
            arrays[self.label_field] = code_of_label[labels]
        return arrays

    @property
    def label_fields(self) -> list[str]:
        """Names of the label fields every evaluation batch carries (after :meth:`setup`; none for data without
        labels). Under ``labels=none`` the training batches carry none of them."""
        return list(self._items.fields) if self._items is not None else []

    @property
    def trains_without_labels(self) -> bool:
        """Whether the training batches carry no label field (``labels=none``, or a source without labels)."""
        return self.labels == "none" or not self.labelled

    def wanted_classes(self) -> list[str] | None:
        """The classes to read: the selected and the probe classes, or None for every class."""
        return None if self.classes is None else [*self.classes, *self.probe_classes]

    def preprocessing(self) -> dict[str, Any]:
        """How to turn a raw image into model input (:class:`Preprocessing`), stored in checkpoints for embedding new
        image files: ``image_size``, ``channels``, ``mean``, ``std``."""
        if self._preprocessing is None:
            raise RuntimeError("preprocessing() needs the data set up; call setup() first.")
        return self._preprocessing.as_dict()

    def setup(self, stage: str | None = None) -> None:
        """Load the items, check them, plan their split (:func:`~simlearn.data.split_plan.plan_splits`), check the
        plan and build the datasets from it; once (a second call keeps the datasets)."""
        if self.datasets:
            return
        items = self.load()
        self.labelled = items.labelled
        self._check_items(items)
        plan = plan_splits(
            items.fields[self.label_field],
            items.names_of(self.label_field),
            items.split,
            self.split_options(),
            has_classes=items.has_classes,
            usable=lambda wanted: self.usable(items, wanted),
        )
        self.class_names, self.probe_class_names = list(plan.class_names), list(plan.probe_class_names)
        self.dataset_class_names = list(plan.dataset_class_names)
        self.split_plan = plan
        self._check_plan(items, plan)
        self._build_datasets(items, plan)

    def _check_items(self, items: Items) -> None:
        """Reject items this config cannot use: a wrong image size or channels, ``on_device`` for files, an unknown
        ``label_field``, a label field named like an array of the written files, options that need labels on items
        without."""
        items.check(self)
        if self.labels == "none" and not items.has_classes:
            raise UserError(
                f"data.labels=none trains without labels, but data '{self.name}' holds pairs, whose label is what "
                f"the pair loss learns; drop data.labels=none (or train on an image folder or CSV of the images)."
            )
        if not items.labelled:
            needs = [key for key, given in (
                ("data.split_by=class", self.split_by == "class"), ("data.classes", self.classes is not None),
                ("data.probe_classes", bool(self.probe_classes)), ("data.m_per_class", bool(self.m_per_class)),
                ("data.label_fraction", self.label_fraction != 1),
                *((f"data.{split}_classes", True) for split in self.split_classes),
            ) if given]  # fmt: skip
            if needs:
                raise UserError(
                    f"{needs[0]} needs classes, but data '{self.name}' has no labels (its images are read as "
                    f"unlabelled: no class folders); drop {' '.join(needs)}, or sort the images into class folders."
                )
        if self.on_device and not items.in_memory:
            raise UserError(
                f"data.on_device=true draws batches from tensors on the training device, but data '{self.name}' "
                f"reads image files; set data.on_device=false (it is for in-memory data: digits, mnist, toy_animals)."
            )
        if self.label_field not in items.fields:
            raise UserError(
                f"data.label_field={self.label_field!r} is not a label field of data '{self.name}'; "
                f"valid: {sorted(items.fields)}."
            )
        reserved = sorted(set(items.fields) & NOT_LABEL_FIELDS)
        if reserved:
            raise UserError(
                f"data '{self.name}' has label field(s) {reserved}, named like what a batch or a written file holds "
                f"besides the label fields ({', '.join(sorted(NOT_LABEL_FIELDS))}); rename them (e.g. the CSV's "
                f"column)."
            )

    def _check_plan(self, items: Items, plan: SplitPlan) -> None:
        """Reject a plan that cannot be trained or evaluated (:meth:`check_splits`), ``m_per_class`` batches that do
        not fit, and a ``num_classes`` that is not the training classes' count (data without labels: only that
        every split has items)."""
        if not items.labelled:
            empty = [split for split, index in plan.indices.items() if split != "val" and not len(index)]
            if empty:
                raise UserError(
                    f"data '{self.name}' has {len(items)} unlabelled images, too few for a {empty[0]} split "
                    f"(data.val_fraction={self.val_fraction}, data.test_fraction={self.test_fraction}); add images."
                )
            return
        self.check_splits(items, plan.labels, plan.indices)
        if self.m_per_class:  # now, not when training starts
            check_m_per_class(plan.labels[plan.indices["train"]], self.m_per_class, self.batch_size)
        trained_count = self.num_train_classes
        if self.num_classes is not None and self.num_classes != trained_count:
            raise UserError(
                f"data.num_classes={self.num_classes} but data '{self.name}' trains on {trained_count} classes "
                f"{some_names(self.class_names[:trained_count])}; set data.num_classes={trained_count} (or null: "
                f"classifier losses are then sized from the training classes)."
            )

    def _build_datasets(self, items: Items, plan: SplitPlan) -> None:
        """The plan's datasets: ``label_field`` relabelled (and the query/gallery roles added), preprocessed with the
        training split's statistics unless the config gives them, augmented for training."""
        if plan.is_gallery is not None:
            items.fields = {**items.fields, GALLERY_FIELD: plan.is_gallery}
        # data without labels: its placeholder class was for the seeded split only; no split carries it
        items.fields = {**items.fields, self.label_field: plan.labels} if items.labelled else {}
        if self.mean is None:
            mean, std = items.normalisation(plan.indices["train"])
        else:
            mean, std = self.mean, self.std
        mean, std = channel_stats(mean, std, self.channels)
        self._preprocessing = Preprocessing(
            self.image_size, self.channels, mean, std, self.crop_pct, self.interpolation
        )
        self._items = items
        # with views, the items come prepared as for evaluation and the views are made from them on the device
        train_augment = self.augment if self.views == 1 else ()
        if self.views > 1:
            self.view_maker = ViewMaker(self.view_transforms, self.views, mean, std, seed=self.seed)
        self.datasets = {
            split: items.dataset(index, self._preprocessing, train_augment if split == "train" else ())
            for split, index in plan.indices.items()
        }
        if self.labels == "none":  # the loss never sees a label: the training batches carry none
            self.datasets["train"].fields = {}
        if self.probe_class_names:
            self.datasets["probe"] = items.dataset(plan.probe, self._preprocessing, ())

    def loader(self, split: str, train: bool = False, batch_size: int | None = None) -> Loader:
        """Batches of one split. ``train``: shuffled (or ``m_per_class``) batches of ``batch_size`` with the training
        augmentation; otherwise every item in order, without augmentation, in batches of ``eval_batch_size``."""
        if split not in self.datasets:
            raise UserError(f"data '{self.name}' has no {split!r} split; it has {sorted(self.datasets)}.")
        dataset = self.datasets[split] if train else self._evaluation_dataset(split)
        sampler = None
        drop_last = False
        if train:
            batch_size = batch_size or self.batch_size
            if self.m_per_class:
                sampler = m_per_class_sampler(dataset.labels(self.label_field), self.m_per_class, batch_size)
            else:
                sampler = EpochSeededRandomSampler(len(dataset), seed=self.seed)
            # m_per_class batches are built as units: a partial one would lack classes
            drop_last = bool(self.m_per_class) or (self._items.drop_incomplete_batch and len(dataset) >= batch_size)
        else:
            batch_size = batch_size or self.eval_batch_size
        if self.on_device:
            trainer = self.trainer
            return DeviceBatchLoader(
                self._device_dataset(dataset),
                batch_size,
                sampler=sampler,
                drop_last=drop_last,
                rank=trainer.global_rank if trainer else 0,
                world_size=trainer.world_size if trainer else 1,
                shard_whole_batches=bool(train and self.m_per_class),
            )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            collate_fn=dataset.collate,
            persistent_workers=self.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``views`` ≥ 2, a training batch (already on the training device) becomes its views
        (:class:`~simlearn.data.views.ViewMaker`); everything else passes unchanged."""
        trainer = self.trainer
        if self.view_maker is None or trainer is None or not trainer.training:
            return batch
        # the batch's number in the run (Lightning's progress, saved in checkpoints): a resumed run makes the same views
        number = trainer.fit_loop.epoch_loop.batch_progress.total.ready
        return self.view_maker(batch, number, rank=trainer.global_rank)

    def train_dataloader(self) -> Loader:
        return self.loader("train", train=True)

    def val_dataloader(self) -> Loader:
        return self.loader("val")

    def test_dataloader(self) -> Loader:
        return self.loader("test")

    @property
    def num_train_classes(self) -> int:
        """How many labels 0..T−1 are training classes: what classifier-style losses are sized for. Every class of
        an item split, the training classes of a class split; a class that ``data.max_train`` left without training
        items keeps its label, so it still counts (the labels above it are unchanged)."""
        return self.split_plan.num_train_labels if self.split_plan is not None else len(self.class_names)

    @property
    def test_protocol(self) -> str:
        """How the test split is evaluated: ``query-gallery`` (the source's queries searched against its gallery) or
        ``leave-one-out`` (every test item a query against all the others)."""
        return "query-gallery" if GALLERY_FIELD in self.label_fields else "leave-one-out"

    def split_summary(self) -> dict[str, Any]:
        """What each split holds (``splits.json``): how items were split, the test protocol, and per split its
        classes and item counts (per class too); for a query/gallery test, the query and gallery counts. ``labels``
        says how training used them (``train``, ``none``; ``absent`` for data without labels, whose splits list
        item counts only); with ``label_fraction`` below 1, the training items kept (``labelled_items``: the item
        numbers, the ``index`` of the run's files) and how many there were."""
        summary: dict[str, Any] = {
            "data": self.name,
            "labels": self.labels if self.labelled else "absent",
            "label_field": self.label_field if self.labelled else None,
            "split_by": self.split_by,
            "closed_set": self.split_by == "item",
            "test_protocol": self.test_protocol if self.labelled else "label-free",
            "splits": {},
        }
        for split, dataset in self.datasets.items():
            if not self.labelled:
                summary["splits"][split] = {"num_items": len(dataset)}
                continue
            labels = self.split_plan.labels[dataset.indices]
            values, counts = labels.unique(return_counts=True)
            entry: dict[str, Any] = {
                "num_items": len(dataset),
                "num_classes": len(values),
                "classes": [self.label_names[v] for v in values.tolist()],
                "items_per_class": {
                    self.label_names[v]: int(n) for v, n in zip(values.tolist(), counts.tolist(), strict=True)
                },
            }
            if split == "test" and GALLERY_FIELD in dataset.fields:
                role = dataset.labels(GALLERY_FIELD)
                entry["num_queries"], entry["num_gallery"] = int((role == 0).sum()), int((role == 1).sum())
            if split == "train" and self.label_fraction < 1:
                entry["label_fraction"] = self.label_fraction
                entry["num_items_before_label_fraction"] = self.split_plan.train_items_before_fraction
                entry["labelled_items"] = dataset.indices.tolist()
            summary["splits"][split] = entry
        return summary

    def probe_dataloader(self) -> Loader:
        """The probe classes' items (never trained on), in order, labelled C, C+1, … in ``label_field``."""
        if "probe" not in self.datasets:
            example = self.class_names[-1] if self.class_names else "zebra"
            raise UserError(
                f"data '{self.name}' has no probe classes; set data.probe_classes to classes to hold out of training "
                f"(e.g. data.probe_classes=[{example}], left out of data.classes); reports.probe embeds them."
            )
        return self.loader("probe")

    # -- shared steps ---------------------------------------------------------------------------------------------
    def _evaluation_dataset(self, split: str) -> SplitDataset:
        """The split's items without the training augmentation (embedding the training split reads it this way)."""
        dataset = self.datasets[split]
        if split != "train" or not self.augment or self.views > 1:
            return dataset
        return self._items.dataset(dataset.indices, self._preprocessing, ())

    def _device_dataset(self, dataset: SplitDataset) -> SplitDataset:
        """``dataset`` with its tensors on the training device. Each source tensor is moved once and shared by the
        splits that index it (the probe split's own, should a source hold it apart, is moved as its own)."""
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        key = (id(dataset.images), str(device))
        if key not in self._device_tensors:
            # tensors moved to another device before (a new trainer) are no longer needed there
            self._device_tensors = {k: v for k, v in self._device_tensors.items() if k[1] == str(device)}
            self._device_tensors[key] = (
                dataset.images.to(device),
                {name: values.to(device) for name, values in dataset.fields.items()},
            )
        moved = copy.copy(dataset)
        moved.images, fields = self._device_tensors[key]
        # the splits share one source tensor but not their fields (the training split of labels=none has none)
        fields.update({name: values.to(device) for name, values in dataset.fields.items() if name not in fields})
        moved.fields = {name: fields[name] for name in dataset.fields}
        return moved.to(device)  # indices, mean, std; the shared tensors are already there
