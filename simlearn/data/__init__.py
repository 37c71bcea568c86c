"""Lightning DataModules; every batch is a dict ``{"image", "index", <label fields>}``.

Every dataset is a source of the one base :class:`EmbeddingDataModule` (simlearn/data/base.py), which splits, samples,
augments and serves its items the same way whatever they are: in-memory tensors or image files.
"""

from simlearn.data.awa2 import AwA2DataModule
from simlearn.data.base import EmbeddingDataModule, Items, SplitDataset
from simlearn.data.digits import DigitsDataModule
from simlearn.data.image_files import FileTable, ImageCSVDataModule, ImageFileDataModule, ImageFolderDataModule
from simlearn.data.in_memory import ImageTensors, InMemoryImageDataModule, TensorImageDataset
from simlearn.data.mnist import MNISTDataModule
from simlearn.data.pairs import PairsCSVDataModule, PairTable

__all__ = [
    "AwA2DataModule",
    "DigitsDataModule",
    "EmbeddingDataModule",
    "FileTable",
    "ImageCSVDataModule",
    "ImageFileDataModule",
    "ImageFolderDataModule",
    "ImageTensors",
    "InMemoryImageDataModule",
    "Items",
    "MNISTDataModule",
    "PairTable",
    "PairsCSVDataModule",
    "SplitDataset",
    "TensorImageDataset",
]
