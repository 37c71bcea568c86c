"""CUB-200-2011 (Wah et al., 2011): 11,788 photos of 200 bird species, read from the dataset's own list files.

Metric learning's split (Oh Song et al., CVPR 2016; Musgrave et al., ECCV 2020; pytorch-metric-learning's ``CUB``):
classes 1–100 train, classes 101–200 test, so every test species is unseen. The dataset's ``train_test_split.txt`` is
*not* used: it splits the images of every species for classification (closed-set), which is another benchmark.
"""

from __future__ import annotations

import os
from pathlib import Path

from simlearn.data.benchmarks import (
    BenchmarkDataModule,
    coded_ids,
    fields_of,
    malformed,
    positive_int,
    read_lines,
    split_at_class,
    unique_ids,
)
from simlearn.data.image_files import FileTable
from simlearn.errors import UserError

#: The last class of the training half (the species 1..100).
LAST_TRAIN_CLASS = 100


class CUB200DataModule(BenchmarkDataModule):
    """CUB-200-2011 from ``images.txt`` (``<image_id> <path>``), ``image_class_labels.txt`` (``<image_id>
    <class_id>``), ``classes.txt`` (``<class_id> <name>``, optional: the image folder names the class otherwise) and
    ``images/<class folder>/<file>.jpg``. ``root`` is the unpacked ``CUB_200_2011/`` folder or its parent.

    Label field ``class``: the species, named as in ``classes.txt`` (``001.Black_footed_Albatross``), coded by id.
    """

    name = "cub200"
    title = "CUB-200-2011"
    url = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
    download = "CUB_200_2011.tgz (1.1 GB, https://data.caltech.edu/records/65de6-vp158)"
    folders = ("CUB_200_2011",)
    lists = (("images.txt",), ("image_class_labels.txt",))
    images = "images/<class folder>/<file>.jpg"

    def read(self, folder: Path) -> FileTable:
        images_txt, labels_txt = folder / "images.txt", folder / "image_class_labels.txt"
        paths: dict[int, str] = {}
        lines: list[tuple[int, int]] = []
        for line, parts in read_lines(images_txt):
            image_id, path = fields_of(images_txt, line, parts, ("image_id", "path"))
            key = positive_int(image_id, images_txt, line, "an image id")
            lines.append((line, key))
            paths[key] = path
        unique_ids(lines, images_txt, "image id")
        label_lines: list[tuple[int, int]] = []
        class_of: dict[int, int] = {}
        for line, parts in read_lines(labels_txt):
            image_id, class_id = fields_of(labels_txt, line, parts, ("image_id", "class_id"))
            key = positive_int(image_id, labels_txt, line, "an image id")
            if key not in paths:
                raise malformed(labels_txt, line, f"an image id of {images_txt.name}", image_id)
            label_lines.append((line, key))
            class_of[key] = positive_int(class_id, labels_txt, line, "a class id")
        unique_ids(label_lines, labels_txt, "image id")
        unlabelled = [key for key in paths if key not in class_of]
        if unlabelled:
            raise UserError(
                f"{labels_txt} gives no class to {len(unlabelled)} of the {len(paths)} images of {images_txt.name}, "
                f"e.g. image id {unlabelled[0]} ({paths[unlabelled[0]]}); replace it with the dataset's own."
            )
        order = sorted(paths)
        class_ids = [class_of[key] for key in order]
        codes, names = coded_ids(class_ids, self.class_names_of(folder, paths, class_of))
        return FileTable(
            paths=[os.path.join(folder, "images", paths[key]) for key in order],
            fields={"class": codes},
            names={"class": names},
            split=split_at_class(class_ids, LAST_TRAIN_CLASS),
        )

    @staticmethod
    def class_names_of(folder: Path, paths: dict[int, str], class_of: dict[int, int]) -> dict[int, str]:
        """Class id → name: from ``classes.txt`` when there is one, else the image folder of the class."""
        names = {class_of[key]: path.split("/")[0] for key, path in paths.items() if "/" in path}
        classes_txt = folder / "classes.txt"
        if classes_txt.is_file():
            for line, parts in read_lines(classes_txt):
                class_id, name = fields_of(classes_txt, line, parts, ("class_id", "class_name"))
                names[positive_int(class_id, classes_txt, line, "a class id")] = name
        return names
