"""Lightning DataModules; every batch is a dict ``{"image", "index", <label fields>}``."""

from simlearn.data.awa2 import AwA2DataModule
from simlearn.data.digits import DigitsDataModule
from simlearn.data.image_files import ImageCSVDataModule, ImageFileDataModule, ImageFolderDataModule
from simlearn.data.in_memory import ImageTensors, InMemoryImageDataModule, TensorImageDataset
from simlearn.data.mnist import MNISTDataModule
from simlearn.data.pairs import PairsCSVDataModule
from simlearn.data.toy_animals import ToyAnimalsDataModule

__all__ = [
    "AwA2DataModule",
    "DigitsDataModule",
    "ImageCSVDataModule",
    "ImageFileDataModule",
    "ImageFolderDataModule",
    "ImageTensors",
    "InMemoryImageDataModule",
    "MNISTDataModule",
    "PairsCSVDataModule",
    "TensorImageDataset",
    "ToyAnimalsDataModule",
]
