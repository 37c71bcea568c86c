"""MNIST through torchvision, held as one uint8 tensor."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision.datasets import MNIST

from simlearn.data.base import EmbeddingDataModule
from simlearn.data.digits import digit_images
from simlearn.data.in_memory import ImageTensors
from simlearn.errors import UserError

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class MNISTDataModule(EmbeddingDataModule):
    """MNIST's 60k train (a validation slice held out per class) and 10k official test images.

    ``root`` is the folder that holds ``MNIST/raw/``. Missing files are downloaded through torchvision when
    ``download`` is true and the network allows; otherwise one error names the files and where they go. The official
    test images are the test split, so ``test_fraction`` must be 0 (the seeded split only takes a validation slice).
    """

    name = "mnist"

    def __init__(self, root: str | os.PathLike, download: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if self.test_fraction:
            raise UserError(
                f"data.test_fraction={self.test_fraction}: MNIST tests on its official 10k test images, so the seeded "
                f"split takes only the validation slice; set data.test_fraction=0."
            )
        self.root = Path(root).expanduser()
        self.download = download

    def _missing(self) -> list[str]:
        raw = self.root / "MNIST" / "raw"
        return [f for f in RAW_FILES if not (raw / f).exists() and not (raw / f"{f}.gz").exists()]

    def prepare_data(self) -> None:
        if not self._missing():
            return
        if self.download:
            try:
                MNIST(self.root, train=True, download=True)
                MNIST(self.root, train=False, download=True)
                return
            except (OSError, RuntimeError) as error:  # no network, proxy refusal, bad checksum
                reason = f"downloading them failed ({type(error).__name__}: {error})"
        else:
            reason = "data.download=false"
        raise UserError(
            f"MNIST not found under data.root={str(self.root)!r}: missing {self._missing()} in "
            f"{self.root / 'MNIST' / 'raw'}, and {reason}. Put the four IDX files {list(RAW_FILES)} (optionally "
            f".gz) in <root>/MNIST/raw/, and point data.root (or the SIMLEARN_DATA_DIR environment variable) at "
            f"<root>."
        )

    def load(self) -> ImageTensors:
        self.prepare_data()
        parts = [MNIST(self.root, train=train, download=False) for train in (True, False)]
        images = torch.cat([p.data for p in parts]).unsqueeze(1)  # uint8 (70000, 1, 28, 28)
        digits = torch.cat([p.targets for p in parts])
        return digit_images(images, digits, split=[None] * len(parts[0]) + ["test"] * len(parts[1]))
