"""Lightning DataModules; every batch is a dict ``{"image", "index", <label fields>}``."""

from simlearn.data.digits import DigitsDataModule
from simlearn.data.in_memory import ImageTensors, InMemoryImageDataModule, TensorImageDataset
from simlearn.data.mnist import MNISTDataModule

__all__ = [
    "DigitsDataModule",
    "ImageTensors",
    "InMemoryImageDataModule",
    "MNISTDataModule",
    "TensorImageDataset",
]
