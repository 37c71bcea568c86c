"""Photo datasets read from image files: decoded with PIL and transformed with torchvision item by item.

Nothing is held in memory but the file list. Splits are per class and seeded (the same stratified split as the
in-memory data), classes are chosen and ordered by the config (labels 0..C−1 in the order given), and optional
*probe* classes are kept out of train/val/test entirely and served by :meth:`ImageFileDataModule.probe_dataloader`.
Files that cannot be read are skipped with one counted warning, and so are classes too small for the seeded split to
reach val/test. A file is never in two splits: a CSV that lists one twice is de-duplicated (exact repeats) or
refused (two labels or splits).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import v2

from simlearn.data.in_memory import (
    SPLITS,
    cap_split,
    check_batches_and_fractions,
    check_split_classes,
    m_per_class_sampler,
    stratified_split,
    warn_small_classes,
)
from simlearn.data.samplers import EpochSeededRandomSampler
from simlearn.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: torchvision's ImageNet statistics, what pretrained backbones expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Unreadable images met while loading batches, per process (each DataLoader worker counts its own).
DECODE_FAILURES = {"count": 0}


@dataclass
class FileTable:
    """The image files of a dataset: one path and class name per file, and the split a file is assigned to by the
    source (``None`` where the source leaves it to the seeded split, or ``split`` None when it assigns none)."""

    paths: list[str]
    names: list[str]
    split: list[str | None] | None = None


# -- decoding and transforms -----------------------------------------------------------------------------------------
def image_mode(channels: int) -> str:
    if channels not in (1, 3):
        raise UserError(f"data.channels must be 1 (grey) or 3 (RGB) for image files, got {channels!r}.")
    return "RGB" if channels == 3 else "L"


def read_image(path: str | os.PathLike, channels: int, size_hint: int | None = None) -> Image.Image:
    """Decode an image file as RGB (``channels=3``) or grey (1). JPEGs are decoded at a reduced scale when that
    still leaves at least ``size_hint`` pixels on each side (PIL's draft mode), which is much faster for photos."""
    mode = image_mode(channels)
    with Image.open(path) as image:
        if size_hint:
            image.draft(mode, (size_hint, size_hint))
        return image.convert(mode)


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


def image_transform(
    image_size: int,
    channels: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: Sequence[Callable] = (),
) -> v2.Compose:
    """PIL image → normalised float tensor (channels, image_size, image_size).

    The augmentations run on the float image in [0, 1] (so that crops see the full photo and noise can be added),
    then the shorter side is resized to ``image_size`` and the centre cropped (a no-op after a random crop to that
    size), then the channels are normalised with ``mean`` and ``std``.
    """
    mean, std = list(mean), list(std)
    if channels == 1 and len(mean) == 3:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    if len(mean) != channels or len(std) != channels:
        raise UserError(
            f"data.mean and data.std need one value per channel ({channels}), got {mean} and {std}; "
            f"e.g. data.mean=[0.5] data.std=[0.25] for grey images."
        )
    return v2.Compose(
        [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            *augment,
            v2.Resize(image_size, antialias=True),
            v2.CenterCrop(image_size),
            v2.Normalize(mean, std),
        ]
    )


def readable(paths: Sequence[str]) -> list[bool]:
    """Whether each file opens as an image (its header is read, not the whole image)."""
    flags = []
    for path in paths:
        try:
            with Image.open(path):
                flags.append(True)
        except (OSError, UnidentifiedImageError, ValueError):
            flags.append(False)
    return flags


def load_image(path: str, transform: Callable, channels: int, size_hint: int | None = None) -> torch.Tensor | None:
    """``transform(image)`` of the file at ``path``, or None (with a counted warning) when it cannot be decoded."""
    try:
        image = read_image(path, channels, size_hint)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        DECODE_FAILURES["count"] += 1
        log.warning(
            "skipping unreadable image file %s (%s); %d skipped so far in this process",
            path,
            error,
            DECODE_FAILURES["count"],
        )
        return None
    return transform(image)


def collate_items(items: Sequence[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor]:
    """Stack the items of a batch, leaving out the ones whose image could not be decoded (``None``)."""
    kept = [item for item in items if item is not None]
    if not kept:
        raise UserError(
            f"none of the {len(items)} images of a batch could be decoded; check the image files (see the warnings)."
        )
    return default_collate(kept)


class ImageFileDataset(Dataset):
    """Items ``{"image", "index", <label fields>}`` of some files of a :class:`FileTable`, decoded on access.

    ``fields`` hold one value per file of the table and ``indices`` the table rows of this split, as for the
    in-memory datasets; ``index`` is the table row. An item whose file cannot be decoded is ``None`` (left out of
    its batch by :func:`collate_items`) and counted in a warning.
    """

    def __init__(
        self,
        paths: Sequence[str],
        fields: Mapping[str, torch.Tensor],
        indices: torch.Tensor,
        transform: Callable,
        channels: int,
        size_hint: int | None = None,
    ) -> None:
        self.paths = list(paths)
        self.fields = dict(fields)
        self.indices = indices
        self.transform = transform
        self.channels = channels
        self.size_hint = size_hint

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, row: int) -> torch.Tensor | None:
        """The transformed image of table row ``row``, or None when its file cannot be decoded."""
        return load_image(self.paths[row], self.transform, self.channels, self.size_hint)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor] | None:
        row = int(self.indices[position])
        image = self.load(row)
        if image is None:
            return None
        return {"image": image, "index": torch.tensor(row), **{k: v[row] for k, v in self.fields.items()}}

    def labels(self, field: str) -> torch.Tensor:
        return self.fields[field][self.indices]


class ImageFileDataModule(pl.LightningDataModule):
    """Base for datasets of image files. Subclasses implement :meth:`scan` (the files and their class names).

    ``classes`` selects and orders the trained classes (labels 0..C−1 in that order; null: every class the source
    has, sorted by name); ``probe_classes`` are read too but kept out of train/val/test: ``datasets["probe"]``, with
    labels C, C+1, … in field ``label_field``, names ``probe_class_names``. ``augment`` is the list of training
    transforms (configs/augment/); evaluation only resizes and centre-crops.
    """

    name = "image_files"
    #: Stacks the items of a batch (pair data concatenates instead).
    collate_fn = staticmethod(collate_items)

    def __init__(
        self,
        label_field: str = "label",
        image_size: int = 224,
        channels: int = 3,
        num_classes: int | None = None,
        classes: Sequence[str] | None = None,
        probe_classes: Sequence[str] | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        max_train: int | None = None,
        max_val: int | None = None,
        max_test: int | None = None,
        m_per_class: int | None = None,
        num_workers: int = 4,
        seed: int = 0,
        augment: Any = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        verify_files: bool = True,
    ) -> None:
        super().__init__()
        check_batches_and_fractions(batch_size, eval_batch_size, val_fraction, test_fraction)
        if not isinstance(num_workers, int) or num_workers < 0:
            raise UserError(f"data.num_workers must be an integer ≥ 0, got {num_workers!r}.")
        image_mode(channels)
        self.label_field = label_field
        self.image_size = image_size
        self.channels = channels
        self.num_classes = num_classes
        self.classes = None if classes is None else [str(c) for c in classes]
        self.probe_classes = [str(c) for c in probe_classes or []]
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.limits = {"train": max_train, "val": max_val, "test": max_test}
        self.m_per_class = m_per_class
        self.num_workers = num_workers
        self.seed = seed
        self.augment = augment_transforms(augment)
        self.mean = list(mean)
        self.std = list(std)
        self.verify_files = verify_files
        self.class_names: list[str] = []
        self.probe_class_names: list[str] = []
        self.datasets: dict[str, ImageFileDataset] = {}

    # -- to implement --------------------------------------------------------------------------------------
    def scan(self, wanted: Sequence[str] | None) -> FileTable:
        """The image files of the classes ``wanted`` (every class when None), with their class names."""
        raise NotImplementedError

    def no_images(self, wanted: Sequence[str] | None) -> UserError:
        """The error for a source that lists no image file at all (subclasses say where the files belong)."""
        which = "any class" if wanted is None else f"the classes {list(wanted)}"
        return UserError(f"data '{self.name}' found no image files of {which}; check where it reads them from.")

    # -- shared --------------------------------------------------------------------------------------------
    @property
    def label_fields(self) -> list[str]:
        return [self.label_field]

    def preprocessing(self) -> dict[str, Any]:
        """How evaluation turns an image file into model input (stored in checkpoints): decode with ``channels``
        channels, resize the shorter side to ``image_size`` and centre-crop, scale to [0, 1], normalise."""
        mean, std = self.mean, self.std
        if self.channels == 1 and len(mean) == 3:
            mean, std = [sum(mean) / 3], [sum(std) / 3]
        return {"image_size": self.image_size, "channels": self.channels, "mean": list(mean), "std": list(std)}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        overlap = sorted(set(self.probe_classes) & set(self.classes or []))
        if overlap:
            raise UserError(
                f"data.probe_classes {overlap} are also in data.classes; a probe class must never be trained on."
            )
        wanted = None if self.classes is None else [*self.classes, *self.probe_classes]
        table = self.scan(wanted)
        if not table.paths:
            # before the class count check, whose hint would otherwise be "set data.num_classes=0"
            raise self.no_images(wanted)
        classes = self.classes or sorted(set(table.names) - set(self.probe_classes))
        if self.num_classes is not None and self.num_classes != len(classes):
            raise UserError(
                f"data.num_classes={self.num_classes} but data '{self.name}' trains on {len(classes)} classes "
                f"{classes}; set data.num_classes={len(classes)}."
            )
        missing = sorted(set(classes + self.probe_classes) - set(table.names))
        if missing:
            raise UserError(
                f"data '{self.name}' has no images of the classes {missing}; it has {sorted(set(table.names))}."
            )
        self.class_names = list(classes)
        self.probe_class_names = list(self.probe_classes)
        label_of = {name: i for i, name in enumerate(self.class_names + self.probe_class_names)}
        rows = [i for i, name in enumerate(table.names) if name in label_of]
        if self.verify_files:
            ok = readable([table.paths[i] for i in rows])
            bad = [table.paths[i] for i, flag in zip(rows, ok, strict=True) if not flag]
            if bad:
                log.warning(
                    "data '%s': skipped %d of %d image files that could not be read, e.g. %s",
                    self.name,
                    len(bad),
                    len(rows),
                    ", ".join(bad[:3]),
                )
            rows = [i for i, flag in zip(rows, ok, strict=True) if flag]
        paths = [table.paths[i] for i in rows]
        labels = torch.tensor([label_of[table.names[i]] for i in rows], dtype=torch.long)
        given = [table.split[i] for i in rows] if table.split is not None else [None] * len(rows)
        splits = self._split(labels, given)
        self._check_classes(labels, splits)
        fields = {self.label_field: labels}
        train_transform = image_transform(self.image_size, self.channels, self.mean, self.std, self.augment)
        eval_transform = image_transform(self.image_size, self.channels, self.mean, self.std)
        hint = 2 * self.image_size
        self.datasets = {
            split: ImageFileDataset(
                paths, fields, index, train_transform if split == "train" else eval_transform, self.channels, hint
            )
            for split, index in splits.items()
        }
        if self.probe_class_names:
            probe = torch.nonzero(labels >= len(self.class_names)).flatten()
            self.datasets["probe"] = ImageFileDataset(paths, fields, probe, eval_transform, self.channels, hint)

    def _split(self, labels: torch.Tensor, given: Sequence[str | None]) -> dict[str, torch.Tensor]:
        """Seeded per-class split of the trained classes' files that the source assigns to no split."""
        unknown = sorted({s for s in given if s is not None and s not in SPLITS})
        if unknown:
            raise UserError(f"data '{self.name}' assigns files to splits {unknown}; valid: {list(SPLITS)} or empty.")
        trained = labels < len(self.class_names)
        free = trained & torch.tensor([s is None for s in given], dtype=torch.bool)
        splits = stratified_split(labels, free, self.val_fraction, self.test_fraction, self.seed)
        for split in SPLITS:
            fixed = [i for i, s in enumerate(given) if s == split and trained[i]]
            splits[split] = torch.cat([splits[split], torch.tensor(fixed, dtype=torch.long)]).sort().values
        # before the caps: a class left out by data.max_<split> is the user's choice, one too small is not
        names = self.class_names + self.probe_class_names
        warn_small_classes(labels, free, splits, names, self.name, self.val_fraction, self.test_fraction)
        return {split: cap_split(index, self.limits[split], self.seed, split) for split, index in splits.items()}

    def _check_classes(self, labels: torch.Tensor, splits: dict[str, torch.Tensor]) -> None:
        check_split_classes(labels, splits, self.class_names, self.name, self.val_fraction)

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        if split not in self.datasets:
            raise UserError(f"data '{self.name}' has no {split!r} split; it has {sorted(self.datasets)}.")
        dataset = self.datasets[split]
        kwargs: dict[str, Any] = {
            "num_workers": self.num_workers,
            "collate_fn": self.collate_fn,
            "persistent_workers": self.num_workers > 0,
        }
        if not train:
            return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **kwargs)
        if self.m_per_class:
            sampler = m_per_class_sampler(dataset.labels(self.label_field), self.m_per_class, self.batch_size)
        else:
            sampler = EpochSeededRandomSampler(len(dataset), seed=self.seed)
        # a last batch of one item would break batch norm; drop the incomplete last batch when there are full ones
        drop_last = len(dataset) >= self.batch_size
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=drop_last, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def probe_dataloader(self) -> DataLoader:
        """The probe classes' images (never trained on), evaluation transforms, labels C, C+1, …"""
        if "probe" not in self.datasets:
            raise UserError(f"data '{self.name}' has no probe classes; set data.probe_classes (e.g. [zebra]).")
        return self._loader("probe")


def _image_files(folder: Path, extensions: Sequence[str]) -> list[str]:
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def _image_files_in(folder: Path, extensions: Sequence[str]) -> list[str]:
    """The image files directly in ``folder`` (not in its sub-folders)."""
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())


class ImageFolderDataModule(ImageFileDataModule):
    """One sub-folder of ``root`` per class, holding that class's images (searched recursively)."""

    name = "image_folder"

    def __init__(self, root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.extensions = tuple(extensions)

    def class_folder(self, name: str) -> Path:
        """The folder of class ``name``."""
        return self.root / name

    def missing_root(self) -> UserError:
        return UserError(
            f"data.root={str(self.root)!r} is not a folder; data '{self.name}' reads <root>/<class name>/<images> "
            f"(one folder per class). Point data.root at such a folder."
        )

    def missing_classes(self, missing: Sequence[str], available: Sequence[str]) -> UserError:
        return UserError(
            f"data '{self.name}' has no folder for the classes {list(missing)} under {self.root}; "
            f"the class folders there are {list(available)}."
        )

    def available_classes(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def no_images(self, wanted: Sequence[str] | None) -> UserError:
        extensions = sorted({e.lower() if e.startswith(".") else f".{e.lower()}" for e in self.extensions})
        folders = list(wanted) if wanted is not None else self.available_classes()
        # what is there instead, so that the usual mistakes (root one level too deep, other formats) show
        if folders:
            found = f"its class folders {folders[:10]}{' …' if len(folders) > 10 else ''} hold none"
            others = [p for name in folders[:10] for p in self.class_folder(name).rglob("*") if p.is_file()]
            if others:
                found += f" (they hold {len(others)} other files, e.g. {others[0].name})"
        else:
            found = "it has no class sub-folders"
            loose = _image_files_in(self.root, extensions)
            if loose:
                found += f" but {len(loose)} images directly in it (e.g. {Path(loose[0]).name})"
        return UserError(
            f"data.root={str(self.root)!r} holds no images with extensions {extensions} in class sub-folders "
            f"<root>/<class>/<image>: {found}. Put the images there (one folder per class), or point data.root at "
            f"the folder that holds the class folders."
        )

    def scan(self, wanted: Sequence[str] | None) -> FileTable:
        if not self.root.is_dir():
            raise self.missing_root()
        names = list(wanted) if wanted is not None else self.available_classes()
        missing = [name for name in names if not self.class_folder(name).is_dir()]
        if missing:
            raise self.missing_classes(missing, self.available_classes())
        table = FileTable(paths=[], names=[])
        for name in names:
            files = _image_files(self.class_folder(name), self.extensions)
            table.paths += files
            table.names += [name] * len(files)
        return table


class ImageCSVDataModule(ImageFileDataModule):
    """Images listed in a CSV file with columns ``path`` and ``label`` (the class name) and optionally ``split``
    (train / val / test, or empty to leave the row to the seeded split). Relative paths are relative to ``root``,
    by default the CSV's folder.

    A file is in one split only: rows are matched by their normalised path (``a/x.png`` and ``./a/x.png`` are the
    same file), exact repeats (same label and split) are dropped with one counted warning, and a file listed with
    two labels or two splits (an empty split counts as one: the seeded split's) is refused, naming both rows.
    """

    name = "image_csv"

    def __init__(self, csv: str | os.PathLike, root: str | os.PathLike | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.csv = Path(csv).expanduser()
        self.root = Path(root).expanduser() if root is not None else self.csv.parent

    def scan(self, wanted: Sequence[str] | None) -> FileTable:
        rows, lines = read_csv_lines(self.csv, required=("path", "label"), what="data.csv")
        has_split = "split" in rows[0]
        table = FileTable(paths=[], names=[], split=[] if has_split else None)
        splits: list[str | None] = []
        first: dict[str, int] = {}  # normalised path → its table row
        kept_rows: list[tuple[str, int]] = []  # per table row: the path as written and its CSV line
        duplicates: list[tuple[int, int, str]] = []
        conflicts: list[str] = []
        for row, line in zip(rows, lines, strict=True):
            written = row["path"].strip()
            # the same file however it is written, so that no spelling of it can put it in two splits
            path = os.path.normpath(self.root / written)
            name = row["label"].strip()
            split = (row["split"].strip() or None) if has_split else None
            seen = first.get(path)
            if seen is None:
                first[path] = len(table.paths)
                table.paths.append(path)
                table.names.append(name)
                splits.append(split)
                kept_rows.append((written, line))
            elif (table.names[seen], splits[seen]) == (name, split):
                duplicates.append((line, kept_rows[seen][1], written))
            else:
                conflicts.append(
                    self._conflict(*kept_rows[seen], table.names[seen], splits[seen], written, line, name, split)
                )
        if conflicts:
            more = f" ({len(conflicts) - 1} more files are listed twice like this.)" if len(conflicts) > 1 else ""
            raise UserError(conflicts[0] + more)
        if duplicates:
            line, of, written = duplicates[0]
            log.warning(
                "data.csv=%s: %d duplicate rows (same path, label and split) ignored, e.g. line %d repeats "
                "line %d (%s)",
                self.csv,
                len(duplicates),
                line,
                of,
                written,
            )
        if has_split:
            table.split = splits
        return table

    def _conflict(
        self,
        written: str,
        line: int,
        name: str,
        split: str | None,
        other_written: str,
        other_line: int,
        other_name: str,
        other_split: str | None,
    ) -> str:
        """One line on a file that two CSV rows give different labels or splits."""
        spelled = f" (written {other_written!r} there)" if other_written != written else ""
        where = f"{self.csv}: the file {written!r} is listed with"
        if name != other_name:
            return (
                f"{where} label {name!r} (line {line}) and {other_name!r} (line {other_line}){spelled}; a file has "
                f"one class. Keep one of the rows (or copy the file if it really shows both classes)."
            )
        described = f"split {split!r}" if split else "no split"
        # "split 'train' … and 'test'", but "no split … and split 'test'"
        other = f"split {other_split!r}" if not split else repr(other_split) if other_split else "no split"
        return (
            f"{where} {described} (line {line}) and {other} (line {other_line}){spelled}; a file must be in one "
            f"split only, else val/test score images that were trained on. Keep one of the rows (split: "
            f"{', '.join(SPLITS)}, or empty for the seeded split)."
        )


def read_csv(path: Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    """The rows of a CSV file with a header that has the ``required`` columns (one clear error otherwise)."""
    return read_csv_lines(path, required, what)[0]


def read_csv_lines(path: Path, required: Sequence[str], what: str) -> tuple[list[dict[str, str]], list[int]]:
    """:func:`read_csv`'s rows and the line of the file each ends on (the header is line 1), for messages."""
    if not path.is_file():
        raise UserError(f"{what}={str(path)!r} is not a file; give the path of a CSV with columns {list(required)}.")
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        columns = [c.strip() for c in reader.fieldnames or []]
        lacking = [c for c in required if c not in columns]
        if lacking:
            raise UserError(f"{path} lacks the columns {lacking}; it has {columns}, needs {list(required)}.")
        rows, lines = [], []
        for row in reader:
            rows.append({k.strip(): (v or "") for k, v in row.items() if k is not None})
            lines.append(reader.line_num)
    if not rows:
        raise UserError(f"{path} has a header but no rows; list one image per row.")
    return rows, lines
