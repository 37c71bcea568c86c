"""Lightning DataModules; every batch is a dict ``{"image", "index", <label fields>}``.

Every dataset is a source of the one base :class:`EmbeddingDataModule` (simlearn/data/base.py), which splits, samples,
augments and serves its items the same way whatever they are: in-memory tensors or image files.
"""

from simlearn.data.awa2 import AwA2DataModule
from simlearn.data.base import EmbeddingDataModule, Items, SplitDataset
from simlearn.data.benchmarks import BenchmarkDataModule
from simlearn.data.cars196 import Cars196DataModule
from simlearn.data.cub200 import CUB200DataModule
from simlearn.data.digits import DigitsDataModule
from simlearn.data.image_files import FileTable, ImageCSVDataModule, ImageFileDataModule, ImageFolderDataModule
from simlearn.data.in_memory import ImageTensors, InMemoryImageDataModule, TensorImageDataset
from simlearn.data.inshop import InShopDataModule
from simlearn.data.mnist import MNISTDataModule
from simlearn.data.pairs import PairsCSVDataModule, PairTable
from simlearn.data.sop import SOPDataModule

__all__ = [
    "AwA2DataModule",
    "BenchmarkDataModule",
    "CUB200DataModule",
    "Cars196DataModule",
    "DigitsDataModule",
    "EmbeddingDataModule",
    "FileTable",
    "ImageCSVDataModule",
    "ImageFileDataModule",
    "ImageFolderDataModule",
    "ImageTensors",
    "InMemoryImageDataModule",
    "InShopDataModule",
    "Items",
    "MNISTDataModule",
    "PairTable",
    "PairsCSVDataModule",
    "SOPDataModule",
    "SplitDataset",
    "TensorImageDataset",
]
