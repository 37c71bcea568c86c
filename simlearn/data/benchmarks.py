"""What the standard metric-learning benchmarks share (CUB-200-2011, Cars196, Stanford Online Products, In-Shop
Clothes; one source module each): finding the dataset's folder under ``data.root``, reading its list files with
errors that name the file and line, coding its 1-based class ids, its official split (or none, ``official_split:
false``), and one error line for a dataset that is not there, saying which files were looked for where and where the
dataset comes from. Nothing is ever downloaded: the benchmarks' licences ask users to fetch them from their owners.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from simlearn.data.base import Items
from simlearn.data.image_files import FileTable, ImageFileDataModule
from simlearn.errors import UserError

#: A list file of a dataset: the paths (relative to the dataset's folder) where it may be, the first the usual one.
ListFile = tuple[str, ...]


class BenchmarkDataModule(ImageFileDataModule):
    """A benchmark read from its own list files. Subclasses name the dataset (``title``, ``url``, ``download``), the
    folders under ``root`` it may be unpacked into (``folders``), its list files (``lists``), and implement
    :meth:`read`: the table of the dataset's images with their label fields and official split.

    ``official_split``: true keeps the dataset's own split (fixed train/test items, or train/query/gallery); false
    leaves every item to the seeded split of ``data.split_by``. Every benchmark names its classes' field ``class``
    (the label field by default).
    """

    name = "benchmark"
    #: The dataset's name in messages.
    title: ClassVar[str] = "the benchmark"
    #: Where the dataset comes from.
    url: ClassVar[str] = ""
    #: What to fetch there.
    download: ClassVar[str] = ""
    #: Folders under ``root`` that the dataset may sit in (the name its archive unpacks to); ``root`` itself first.
    folders: ClassVar[tuple[str, ...]] = ()
    #: The list files the dataset's folder must hold.
    lists: ClassVar[tuple[ListFile, ...]] = ()
    #: Where the images are, relative to the dataset's folder (for messages).
    images: ClassVar[str] = ""

    def __init__(
        self, root: str | os.PathLike, official_split: bool = True, label_field: str = "class", **kwargs: Any
    ) -> None:
        super().__init__(label_field=label_field, **kwargs)
        self.root = Path(root).expanduser()
        self.official_split = official_split
        #: The dataset's folder (``root`` or a folder of ``folders`` under it), once found.
        self.folder: Path | None = None

    # -- what a benchmark implements ----------------------------------------------------------------------------
    def read(self, folder: Path) -> FileTable:
        """Every image of the dataset in ``folder`` with its label fields and its official split."""
        raise NotImplementedError

    # -- shared steps -------------------------------------------------------------------------------------------
    def scan(self, wanted: Sequence[str] | None) -> FileTable:
        # every class is read (a few list files, no folder listing); the base keeps the wanted ones
        self.folder = self.dataset_folder()
        table = self.read(self.folder)
        if not self.official_split:
            table.split = None
        return table

    def list_path(self, folder: Path, list_file: ListFile) -> Path | None:
        """Where ``list_file`` is in ``folder``, or None."""
        return next((folder / name for name in list_file if (folder / name).is_file()), None)

    def dataset_folder(self) -> Path:
        """``root``, or the folder under it, that holds every list file; else the one-line error that says what is
        missing where and where the dataset comes from."""
        candidates = [self.root, *(self.root / name for name in self.folders)]
        for folder in candidates:
            if all(self.list_path(folder, list_file) for list_file in self.lists):
                return folder
        for folder in candidates:
            present = [list_file[0] for list_file in self.lists if self.list_path(folder, list_file)]
            if present:
                missing = [" or ".join(lf) for lf in self.lists if not self.list_path(folder, lf)]
                raise UserError(
                    f"{self.title} at {folder} is incomplete: it has {', '.join(present)} but not "
                    f"{', '.join(missing)}; it needs {self.expected()}. {self.where_from()}"
                )
        looked = " and ".join(str(folder) for folder in candidates)
        raise UserError(f"{self.title} not found: looked for {self.expected()} in {looked}. {self.where_from()}")

    def expected(self) -> str:
        """The files the dataset's folder holds, for messages."""
        return ", ".join(" or ".join(list_file) for list_file in self.lists) + f" and {self.images}"

    def where_from(self) -> str:
        """Where to get the dataset and where to put it (nothing is downloaded at run time)."""
        inside = f" (or to the folder that holds {' or '.join(self.folders)}/)" if self.folders else ""
        return (
            f"Download {self.download} from {self.url}, unpack it and set data.root to the folder that holds those "
            f"files{inside}; simlearn never downloads it."
        )

    def no_images(self, wanted: Sequence[str] | None) -> UserError:
        return UserError(
            f"{self.title} at {self.folder}: its lists name no images; replace them with the dataset's own. "
            f"{self.where_from()}"
        )

    def usable(self, items: Items, wanted: torch.Tensor) -> torch.Tensor:
        usable = super().usable(items, wanted)  # unreadable images skipped with one counted warning
        if bool(wanted.any()) and not bool(usable.any()):
            example = items.paths[int(torch.nonzero(wanted)[0])]
            raise UserError(
                f"{self.title} at {self.folder}: none of the {int(wanted.sum())} images its lists name could be read "
                f"(e.g. {example}); the images belong in {self.folder}/{self.images}. Unpack the dataset's images "
                f"there. {self.where_from()}"
            )
        return usable


# -- reading list files ---------------------------------------------------------------------------------------------
def read_lines(path: Path) -> list[tuple[int, list[str]]]:
    """The non-blank lines of a whitespace-separated list file, split into fields, with their 1-based numbers."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not a text file ({error}); replace it with the dataset's own file.") from None
    return [(number, line.split()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def malformed(path: Path, line: int, expected: str, got: Sequence[str] | str) -> UserError:
    """The error for a line of a list file that is not what the dataset's format says."""
    shown = got if isinstance(got, str) else " ".join(got)
    return UserError(
        f"{path}, line {line}: expected {expected}, got {shown!r}. The file is damaged or edited; replace it with "
        f"the dataset's own."
    )


def fields_of(path: Path, line: int, parts: Sequence[str], names: Sequence[str]) -> list[str]:
    """``parts`` when there is exactly one per name in ``names``, else :func:`malformed`."""
    if len(parts) != len(names):
        raise malformed(path, line, f"{len(names)} fields <{'> <'.join(names)}>", parts)
    return list(parts)


def positive_int(value: str, path: Path, line: int, what: str) -> int:
    """``value`` as an integer ≥ 1 (the datasets' ids are 1-based), else :func:`malformed`."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise malformed(path, line, f"{what} as an integer ≥ 1", value)
    return number


def unique_ids(rows: Sequence[tuple[int, int]], path: Path, what: str) -> dict[int, int]:
    """``{id: line}`` of ``(line, id)`` rows, refusing an id listed twice."""
    seen: dict[int, int] = {}
    for line, key in rows:
        if key in seen:
            raise malformed(path, line, f"each {what} once (it is on line {seen[key]} too)", str(key))
        seen[key] = line
    return seen


# -- label fields and splits ----------------------------------------------------------------------------------------
def coded_ids(ids: Sequence[int], names: Mapping[int, str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Codes 0..K−1 of the distinct 1-based ``ids`` in increasing order, and their names: ``names[id]`` when given
    (a name that two ids share gets its id appended), else the id itself."""
    distinct = sorted(set(ids))
    code = {key: index for index, key in enumerate(distinct)}
    named = [(names or {}).get(key, str(key)) for key in distinct]
    counts = Counter(named)
    named = [f"{name} ({key})" if counts[name] > 1 else name for name, key in zip(named, distinct, strict=True)]
    return torch.tensor([code[key] for key in ids], dtype=torch.long), named


def split_at_class(class_ids: Sequence[int], last_train: int) -> list[str]:
    """The official split of CUB and Cars196 in metric learning: classes 1..``last_train`` train, the rest test."""
    return ["train" if class_id <= last_train else "test" for class_id in class_ids]
