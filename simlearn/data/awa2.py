"""Animals with Attributes 2 (Xian et al., 2018): 37,322 photos of 50 animal classes, read from its JPEGImages/."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simlearn.data.image_files import FileTable, ImageFolderDataModule
from simlearn.errors import UserError

AWA2_URL = "https://cvml.ista.ac.at/AwA2/"
LAYOUT = "<root>/JPEGImages/<class>/<class>_<number>.jpg (multi-word class names joined by '+', e.g. killer+whale)"


class AwA2DataModule(ImageFolderDataModule):
    """AwA2's ``JPEGImages/<class>/`` folders as an image-folder dataset.

    ``root`` is the unpacked ``Animals_with_Attributes2`` folder (the one holding ``JPEGImages/``; its parent works
    too). Class names are AwA2's (``killer+whale``; a space or ``_`` may stand for the ``+``). Only the folders of
    the wanted classes are listed, so a selection of classes is read quickly.
    """

    name = "awa2"

    def __init__(self, root: str | os.PathLike, **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.dataset_root = Path(root).expanduser()

    @staticmethod
    def class_name(name: Any) -> str:
        return awa2_name(name)

    def _images_dir(self) -> Path | None:
        for candidate in (self.dataset_root, self.dataset_root / "Animals_with_Attributes2"):
            if (candidate / "JPEGImages").is_dir():
                return candidate / "JPEGImages"
        return None

    def scan(self, wanted: Sequence[str] | None) -> FileTable:
        images = self._images_dir()
        if images is None:
            raise self.missing_root()
        self.root = images
        return super().scan(wanted)

    def missing_root(self) -> UserError:
        return UserError(
            f"AwA2 not found: data.root={str(self.dataset_root)!r} has no JPEGImages/ folder. Download "
            f"'AwA2-data.zip' from {AWA2_URL} (Animals with Attributes 2, 13 GB), unzip it and set "
            f"data.root=/path/to/Animals_with_Attributes2 (or the SIMLEARN_DATA_DIR environment variable to the "
            f"folder that holds Animals_with_Attributes2/). Expected layout: {LAYOUT}."
        )

    def missing_classes(self, missing: Sequence[str], available: Sequence[str]) -> UserError:
        return UserError(
            f"AwA2 at {self.root} has no image folder for the classes {list(missing)} (data.classes / "
            f"data.probe_classes); expected layout: {LAYOUT}. Classes found: {list(available)}. The full dataset "
            f"with all 50 classes is at {AWA2_URL}."
        )


def awa2_name(name: str) -> str:
    """AwA2's spelling of a class name: words joined by '+' (``killer whale`` → ``killer+whale``)."""
    return "+".join(str(name).replace("_", " ").split())
