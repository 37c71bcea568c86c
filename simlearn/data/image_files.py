"""Photo datasets read from image files: decoded with PIL and transformed with torchvision item by item.

Nothing is held in memory but the file list (:class:`FileTable`); :class:`~simlearn.data.base.EmbeddingDataModule`
splits it like every source: per class and seeded, classes chosen and ordered by the config (labels 0..C−1 in the
order given), *probe* classes kept out of train/val/test and served by ``probe_dataloader()``. Files that cannot be
read are skipped with one counted warning, and so are classes too small for the seeded split to reach val/test.
A file is never in two splits: a CSV that lists one twice is de-duplicated (exact repeats) or refused (two labels or
splits).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import default_collate
from torchvision.transforms import v2

from simlearn.data.base import EmbeddingDataModule, Items, Preprocessing, SplitDataset, channel_stats, encode
from simlearn.data.splits import SPLITS
from simlearn.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: torchvision's ImageNet statistics, what pretrained backbones expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Errors PIL raises for a file that is not a (complete) image, or one too large to decode (a decompression bomb).
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)
#: Unreadable images met while loading batches, per process (each DataLoader worker counts its own).
DECODE_FAILURES = {"count": 0}
#: the most DataLoader workers that ``num_workers=null`` (the photo datasets' default) starts
DEFAULT_MAX_WORKERS = 4


def default_num_workers() -> int:
    """One DataLoader worker per core this process may use, at most :data:`DEFAULT_MAX_WORKERS`: a fixed 4 made
    PyTorch warn on every 2-core machine that the workers exceed the cores (and may be slow or freeze)."""
    try:
        cores = len(os.sched_getaffinity(0))  # what PyTorch's DataLoader compares num_workers with
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(DEFAULT_MAX_WORKERS, cores))


# -- decoding and transforms -----------------------------------------------------------------------------------------
def image_mode(channels: int) -> str:
    if channels not in (1, 3):
        raise UserError(f"data.channels must be 1 (grey) or 3 (RGB) for image files, got {channels!r}.")
    return "RGB" if channels == 3 else "L"


def resize_side(image_size: int, crop_pct: float | None = None) -> int:
    """The shorter side an image is resized to before the centre ``image_size`` is cropped, without augmentation:
    ``floor(image_size / crop_pct)`` (a backbone's evaluation crop, as timm's ``create_transform``), else
    ``image_size`` (the full square)."""
    return image_size if not crop_pct else math.floor(image_size / crop_pct)


#: torchvision's interpolation names (what configs and checkpoints record) as Pillow's filters
_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class ImageDecoder:
    """The one way simlearn decodes an image file, for training data, galleries, queries and uploads alike (so that
    one file gets one embedding on every path): RGB (``channels=3``) or grey (1), and with ``resize`` (evaluation:
    :func:`resize_side`) already resized to it when larger, its shorter side to ``resize`` with ``interpolation``,
    as the transform's resize would. ``draft``: JPEGs are decoded at 1/2 … 1/8 scale where that leaves this many
    pixels a side (PIL's draft mode; default twice ``resize``).

    A large image is never turned into a float tensor at full size (4 bytes × channels per pixel, resized from
    there: a gigabyte for a 7000 × 7000 upload): it is resized in uint8 by Pillow's antialiased filter, whose passes
    need memory of the order of the output only. The result is the float path's to within uint8 rounding (0.006
    after normalisation); images smaller than ``resize`` are left to the transform. Without ``resize`` (training
    with augmentation: random crops see the whole photo) the image is decoded at full size."""

    channels: int
    resize: int | None = None
    interpolation: str | None = None
    draft: int | None = None

    def __call__(self, source: str | os.PathLike | IO[bytes], formats: Sequence[str] | None = None) -> Image.Image:
        return self.decode(source, formats)[0]

    def decode(
        self, source: str | os.PathLike | IO[bytes], formats: Sequence[str] | None = None
    ) -> tuple[Image.Image, int]:
        """The image and the number of pixels decoded (before any resize). ``formats``: the PIL formats to accept
        (e.g. a service's allow-list), all of them by default; raises one of :data:`DECODE_ERRORS`."""
        mode = image_mode(self.channels)
        draft = self.draft or (2 * self.resize if self.resize else None)
        with Image.open(source, formats=None if formats is None else list(formats)) as image:
            if draft:
                image.draft(mode, (draft, draft))  # JPEG only: a no-op for other formats
            image.load()
            decoded = image.width * image.height
            # palette, 1-bit, CMYK, 16-bit …: converted first (Pillow resizes "P" and "1" nearest-neighbour only)
            converted = image if image.mode == mode else image.convert(mode)
            width, height = converted.size
            short, long = min(width, height), max(width, height)
            if self.resize is None or short <= self.resize:  # the file's own image is closed on leaving: a copy
                return (converted.copy() if converted is image else converted), decoded
            # torchvision's Resize(resize): the shorter side to resize, the longer one scaled and truncated
            other = int(self.resize * long / short)
            size = (self.resize, other) if width <= height else (other, self.resize)
            filter_ = _RESAMPLING.get(self.interpolation or "bilinear", Image.Resampling.BILINEAR)
            return converted.resize(size, filter_), decoded


def evaluation_decoder(preprocessing: Any) -> ImageDecoder:
    """The decoder of images prepared without augmentation by ``preprocessing`` (a :class:`Preprocessing` or a
    checkpoint's preprocessing dict): resized to the transform's resize side with its interpolation."""
    get = preprocessing.get if isinstance(preprocessing, Mapping) else lambda key: getattr(preprocessing, key, None)
    return ImageDecoder(
        int(get("channels")), resize_side(int(get("image_size")), get("crop_pct")), get("interpolation")
    )


def image_transform(
    image_size: int,
    channels: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: Sequence[Callable] = (),
    crop_pct: float | None = None,
    interpolation: str | None = None,
) -> v2.Compose:
    """PIL image → normalised float tensor (channels, image_size, image_size).

    The augmentations run on the float image in [0, 1] (so that crops see the full photo and noise can be added),
    then the shorter side is resized and the centre ``image_size`` cropped, then the channels are normalised with
    ``mean`` and ``std``. Without augmentation (evaluation) that is a backbone's own evaluation transform, as timm's
    ``create_transform`` makes it: the shorter side resized to ``floor(image_size / crop_pct)`` with
    ``interpolation``; None for either is simlearn's earlier transform (the full square, bilinear), what checkpoints
    without them were trained with. With augmentation the random crop already has the size (the resize is a no-op),
    as timm's training transform has no ``crop_pct`` either.
    """
    mean, std = channel_stats(mean, std, channels)
    scale = image_size if augment else resize_side(image_size, crop_pct)
    mode = v2.InterpolationMode(interpolation or "bilinear")
    return v2.Compose(
        [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            *augment,
            v2.Resize(scale, interpolation=mode, antialias=True),
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


def load_image(path: str, transform: Callable, decoder: ImageDecoder) -> torch.Tensor | None:
    """``transform(image)`` of the file at ``path``, or None (with a counted warning) when it cannot be decoded."""
    try:
        image = decoder(path)
    except DECODE_ERRORS as error:
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


class ImageFileDataset(SplitDataset):
    """Items ``{"image", "index", <label fields>}`` of some files of a :class:`FileTable`, decoded on access.

    ``fields`` hold one value per file of the table and ``indices`` the table rows of this split, as for the
    in-memory datasets; ``index`` is the table row. An item whose file cannot be decoded is ``None`` (left out of
    its batch by :func:`collate_items`) and counted in a warning.
    """

    collate = staticmethod(collate_items)

    def __init__(
        self,
        paths: Sequence[str],
        fields: Mapping[str, torch.Tensor],
        indices: torch.Tensor,
        transform: Callable,
        decoder: ImageDecoder,
    ) -> None:
        self.paths = list(paths)
        self.fields = dict(fields)
        self.indices = indices
        self.transform = transform
        self.decoder = decoder

    def load(self, row: int) -> torch.Tensor | None:
        """The transformed image of table row ``row``, or None when its file cannot be decoded."""
        return load_image(self.paths[row], self.transform, self.decoder)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor] | None:
        row = int(self.indices[position])
        image = self.load(row)
        if image is None:
            return None
        return {"image": image, "index": torch.tensor(row), **{k: v[row] for k, v in self.fields.items()}}

    def paths_of(self, index: Sequence[int]) -> list[str]:
        return [self.paths[int(i)] for i in index]


@dataclass(kw_only=True)
class FileTable(Items):
    """The image files of a dataset, one row each: ``paths`` plus :class:`Items`' label fields (codes and names) and
    the split a row is assigned to by the source (``split``, or None to leave every row to the seeded split)."""

    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def of(
        cls,
        paths: Sequence[str],
        columns: Mapping[str, Sequence[str]],
        first: Sequence[str] = (),
        split: Sequence[str | None] | None = None,
    ) -> FileTable:
        """A table from text labels, one column per label field; the first column is the class, its names in
        ``first`` coded 0, 1, … in that order and the others after them sorted as text; each other column is coded
        by its distinct values sorted (as numbers when all of them are numbers)."""
        fields, names = {}, {}
        for i, (key, values) in enumerate(columns.items()):
            fields[key], names[key] = encode(values, first) if i == 0 else encode(values, numeric=True)
        return cls(paths=list(paths), fields=fields, names=names, split=split)

    def normalisation(self, train: torch.Tensor) -> tuple[list[float], list[float]]:
        """ImageNet's statistics, what pretrained backbones expect (reading every file to measure would be slow)."""
        return list(IMAGENET_MEAN), list(IMAGENET_STD)

    def transform(self, preprocessing: Preprocessing, augment: Sequence[Callable]) -> v2.Compose:
        p = preprocessing
        return image_transform(p.image_size, p.channels, p.mean, p.std, augment, p.crop_pct, p.interpolation)

    def decoder(self, preprocessing: Preprocessing, augment: Sequence[Callable]) -> ImageDecoder:
        """How a split's files are decoded: as every other path decodes them (:func:`evaluation_decoder`) without
        augmentation; at full size (JPEGs drafted to twice the image size, as always) for augmented training."""
        if augment:
            return ImageDecoder(preprocessing.channels, draft=2 * preprocessing.image_size)
        return evaluation_decoder(preprocessing)

    def dataset(self, indices: torch.Tensor, preprocessing: Preprocessing, augment: Sequence[Callable]) -> SplitDataset:
        transform, decoder = self.transform(preprocessing, augment), self.decoder(preprocessing, augment)
        return ImageFileDataset(self.paths, self.fields, indices, transform, decoder)


class ImageFileDataModule(EmbeddingDataModule):
    """What the sources of image files share on top of the one base: they implement :meth:`scan` (the files and their
    labels, a :class:`FileTable`, or :meth:`no_images` when there are none); ``verify_files`` opens every wanted file's
    header at setup and skips the unreadable ones; workers decode (``num_workers``; None: one per core, at most 4,
    :func:`default_num_workers`). ``augment`` is the list of training transforms (configs/augment/); evaluation only
    resizes and centre-crops.
    """

    name = "image_files"

    def __init__(self, verify_files: bool = True, num_workers: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_workers=default_num_workers() if num_workers is None else num_workers, **kwargs)
        image_mode(self.channels)
        self.verify_files = verify_files

    def scan(self, wanted: Sequence[str] | None) -> FileTable:
        """The image files of the classes ``wanted`` (every class when None), with their labels."""
        raise NotImplementedError

    def no_images(self, wanted: Sequence[str] | None) -> UserError:
        """The error for a source that lists no image file at all (subclasses say where the files belong)."""
        which = "any class" if wanted is None else f"the classes {list(wanted)}"
        return UserError(f"data '{self.name}' found no image files of {which}; check where it reads them from.")

    def load(self) -> FileTable:
        wanted = self.wanted_classes()
        table = self.scan(wanted)
        if not len(table):
            # before the class checks, whose hints would otherwise be "set data.num_classes=0"
            raise self.no_images(wanted)
        return table

    def usable(self, items: Items, wanted: torch.Tensor) -> torch.Tensor:
        if not self.verify_files:
            return wanted
        rows = torch.nonzero(wanted).flatten().tolist()
        bad = [i for i, ok in zip(rows, readable([items.paths[i] for i in rows]), strict=True) if not ok]
        if bad:
            log.warning(
                "data '%s': skipped %d of %d image files that could not be read, e.g. %s",
                self.name,
                len(bad),
                len(rows),
                ", ".join(items.paths[i] for i in bad[:3]),
            )
        usable = wanted.clone()
        usable[bad] = False
        return usable


def _image_files(folder: Path, extensions: Sequence[str]) -> list[str]:
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def _image_files_in(folder: Path, extensions: Sequence[str]) -> list[str]:
    """The image files directly in ``folder`` (not in its sub-folders)."""
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())


#: The one class of the images of a folder without class folders: a placeholder the seeded split reads, never a label.
UNLABELLED = "(unlabelled)"


class ImageFolderDataModule(ImageFileDataModule):
    """One sub-folder of ``root`` per class, holding that class's images (searched recursively); or, when ``root``
    has no sub-folder but images directly in it, those images without labels (:attr:`Items.labelled` false: trained
    by a label-free loss, split by item, evaluated by the label-free metrics)."""

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
        if wanted is None and not self.available_classes():
            loose = _image_files_in(self.root, self.extensions)
            if loose:  # a flat folder of images: read without labels
                table = FileTable.of(loose, {self.label_field: [UNLABELLED] * len(loose)})
                table.labelled = False
                return table
        names = list(wanted) if wanted is not None else self.available_classes()
        missing = [name for name in names if not self.class_folder(name).is_dir()]
        if missing:
            raise self.missing_classes(missing, self.available_classes())
        paths: list[str] = []
        classes: list[str] = []
        for name in names:
            files = _image_files(self.class_folder(name), self.extensions)
            paths += files
            classes += [name] * len(files)
        return FileTable.of(paths, {self.label_field: classes}, first=wanted or ())


class ImageCSVDataModule(ImageFileDataModule):
    """Images listed in a CSV file with columns ``path`` and ``label`` (the class name) and optionally ``split``
    (train / val / test, or empty to leave the row to the seeded split). Relative paths are relative to ``root``,
    by default the CSV's folder.

    Every other column is a label field too, named by its header (``colour``, ``size``, …): its distinct values are
    coded 0, 1, … in sorted order, as numbers when every value is one (sizes 2, 10 → codes 0, 1), else as text. The
    ``label`` column becomes the field ``data.label_field`` (so ``data.label_field=animal`` names it ``animal``),
    unless ``data.label_field`` names another column: then that column holds the classes that retrieval,
    ``data.classes`` and ``data.probe_classes`` use, and ``label`` is a field like the others.

    A file is in one split only: rows are matched by their normalised path (``a/x.png`` and ``./a/x.png`` are the
    same file), exact repeats (same labels and split) are dropped with one counted warning, and a file listed with
    two labels or two splits (an empty split counts as one: the seeded split's) is refused, naming both rows.
    """

    name = "image_csv"

    def __init__(self, csv: str | os.PathLike, root: str | os.PathLike | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.csv = Path(csv).expanduser()
        self.root = Path(root).expanduser() if root is not None else self.csv.parent

    def class_column(self) -> str:
        """The column of class names: ``data.label_field`` when the CSV has such a column, else ``label``."""
        if self.csv.is_file():
            with self.csv.open(newline="") as file:
                if self.label_field in (c.strip() for c in next(csv.reader(file), [])):
                    return self.label_field
        return "label"

    def scan(self, wanted: Sequence[str] | None) -> FileTable:
        class_column = self.class_column()
        rows, lines = read_csv_lines(self.csv, required=("path", class_column), what="data.csv")
        # the class column first: FileTable.of codes the wanted classes first, in their order
        columns = sorted((c for c in rows[0] if c not in ("path", "split")), key=lambda c: c != class_column)
        has_split = "split" in rows[0]
        paths: list[str] = []
        labels: list[tuple[str, ...]] = []
        splits: list[str | None] = []
        first: dict[str, int] = {}  # normalised path → its table row
        kept_rows: list[tuple[str, int]] = []  # per table row: the path as written and its CSV line
        duplicates: list[tuple[int, int, str]] = []
        conflicts: list[str] = []
        for row, line in zip(rows, lines, strict=True):
            written = row["path"].strip()
            # the same file however it is written, so that no spelling of it can put it in two splits
            path = os.path.normpath(self.root / written)
            values = tuple(row[c].strip() for c in columns)
            split = (row["split"].strip() or None) if has_split else None
            seen = first.get(path)
            if seen is None:
                first[path] = len(paths)
                paths.append(path)
                labels.append(values)
                splits.append(split)
                kept_rows.append((written, line))
            elif (labels[seen], splits[seen]) == (values, split):
                duplicates.append((line, kept_rows[seen][1], written))
            else:
                conflicts.append(
                    self._conflict(
                        columns, (*kept_rows[seen], labels[seen], splits[seen]), (written, line, values, split)
                    )
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
        # the wanted classes' rows only, as an image folder lists only their folders
        rows_kept = range(len(paths)) if wanted is None else [i for i, v in enumerate(labels) if v[0] in set(wanted)]
        return FileTable.of(
            [paths[i] for i in rows_kept],
            {
                self.label_field if c == class_column else c: [labels[i][k] for i in rows_kept]
                for k, c in enumerate(columns)
            },
            first=wanted or (),
            split=[splits[i] for i in rows_kept] if has_split else None,
        )

    def _conflict(
        self,
        columns: Sequence[str],
        earlier: tuple[str, int, tuple[str, ...], str | None],
        later: tuple[str, int, tuple[str, ...], str | None],
    ) -> str:
        """One line on a file that two CSV rows, each ``(path as written, line, labels, split)``, give different labels
        or splits."""
        written, line, values, split = earlier
        other_written, other_line, other_values, other_split = later
        spelled = f" (written {other_written!r} there)" if other_written != written else ""
        where = f"{self.csv}: the file {written!r} is listed with"
        for column, value, other in zip(columns, values, other_values, strict=True):
            if value == other:
                continue
            if column == columns[0]:
                return (
                    f"{where} {column} {value!r} (line {line}) and {other!r} (line {other_line}){spelled}; a file has "
                    f"one class. Keep one of the rows (or copy the file if it really shows both classes)."
                )
            return (
                f"{where} {column} {value!r} (line {line}) and {other!r} (line {other_line}){spelled}; a file has one "
                f"value per column. Keep one of the rows."
            )
        described = f"split {split!r}" if split else "no split"
        # "split 'train' … and 'test'", but "no split … and split 'test'"
        other = f"split {other_split!r}" if not split else repr(other_split) if other_split else "no split"
        return (
            f"{where} {described} (line {line}) and {other} (line {other_line}){spelled}; a file must be in one "
            f"split only, else val/test score images that were trained on. Keep one of the rows (split: "
            f"{', '.join(SPLITS)}, or empty for the seeded split)."
        )


def read_csv_lines(path: Path, required: Sequence[str], what: str) -> tuple[list[dict[str, str]], list[int]]:
    """The rows of a CSV file with a header that has the ``required`` columns (one clear error otherwise), and the
    line of the file each ends on (the header is line 1), for messages."""
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
