"""Cars196 (Stanford Cars, Krause et al., 2013): 16,185 photos of 196 car models, read from ``cars_annos.mat``.

Metric learning's split (Oh Song et al., CVPR 2016; Musgrave et al., ECCV 2020; pytorch-metric-learning's
``Cars196``): classes 1–98 train, classes 99–196 test, so every test model is unseen. The annotations' ``test`` flag
(the classification split, closed-set) is not used; nor are the bounding boxes (the benchmark embeds whole images).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from simlearn.data.benchmarks import BenchmarkDataModule, coded_ids, split_at_class
from simlearn.data.image_files import FileTable
from simlearn.errors import UserError

#: The last class of the training half (the models 1..98).
LAST_TRAIN_CLASS = 98
#: The fields of an annotation that are read.
REQUIRED_FIELDS = ("relative_im_path", "class")


class Cars196DataModule(BenchmarkDataModule):
    """Cars196 from ``cars_annos.mat`` (the struct array ``annotations`` with fields ``relative_im_path``, ``bbox_x1``,
    ``bbox_y1``, ``bbox_x2``, ``bbox_y2``, ``class`` (1-based), ``test``; and the cell array ``class_names``) and the
    images it names, relative to its folder (``car_ims/000001.jpg``).

    Label field ``class``: the car model, named as in ``class_names`` (``AM General Hummer SUV 2000``), coded by id.
    """

    name = "cars196"
    title = "Cars196 (Stanford Cars)"
    url = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html"
    download = "car_ims.tgz and cars_annos.mat (1.9 GB)"
    folders = ("cars196",)
    lists = (("cars_annos.mat",),)
    images = "car_ims/<number>.jpg"

    def read(self, folder: Path) -> FileTable:
        path = folder / "cars_annos.mat"
        annotations, class_names = read_annotations(path)
        names = {i + 1: str(name) for i, name in enumerate(class_names)}
        paths, class_ids = [], []
        for number, annotation in enumerate(annotations, 1):
            image, class_id = str(annotation["relative_im_path"]).strip(), annotation["class"]
            try:
                class_id = int(class_id)
            except (TypeError, ValueError):
                class_id = 0
            if not image or class_id < 1:
                raise UserError(
                    f"{path}: annotation {number} has relative_im_path {image!r} and class "
                    f"{annotation['class']!r}; expected an image path and a class id ≥ 1. The file is damaged; "
                    f"replace it with the dataset's own."
                )
            paths.append(os.path.join(folder, image))
            class_ids.append(class_id)
        codes, named = coded_ids(class_ids, names)
        return FileTable(
            paths=paths,
            fields={"class": codes},
            names={"class": named},
            split=split_at_class(class_ids, LAST_TRAIN_CLASS),
        )


def read_annotations(path: Path) -> tuple[np.ndarray, list[str]]:
    """The records of ``annotations`` (a 1-D array whose items index by field name) and the ``class_names`` of
    ``cars_annos.mat``, read with SciPy."""
    from scipy.io import loadmat  # SciPy comes with scikit-learn; imported here so that other data need not load it
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path, squeeze_me=True)
    except (MatReadError, ValueError, OSError, TypeError) as error:
        raise UserError(
            f"{path} could not be read as a MATLAB file ({error}); replace it with the dataset's own."
        ) from None
    annotations = mat.get("annotations")
    if annotations is None or annotations.dtype.names is None:
        raise UserError(
            f"{path} has no struct array 'annotations' (it has {sorted(k for k in mat if not k.startswith('__'))}); "
            f"is it Cars196's cars_annos.mat? (cars_train_annos.mat / cars_test_annos.mat of the devkit are not it.)"
        )
    lacking = [name for name in REQUIRED_FIELDS if name not in annotations.dtype.names]
    if lacking:
        raise UserError(
            f"{path}: its annotations lack the fields {lacking} (they have {list(annotations.dtype.names)}); "
            f"is it Cars196's cars_annos.mat?"
        )
    class_names = mat.get("class_names")
    names = [] if class_names is None else [str(name) for name in np.atleast_1d(class_names)]
    return np.atleast_1d(annotations), names
