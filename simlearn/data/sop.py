"""Stanford Online Products (Oh Song et al., CVPR 2016): 120,053 photos of 22,634 products sold on eBay, in 12
categories, read from ``Ebay_train.txt`` and ``Ebay_test.txt``.

The official split is by file: the 59,551 images of the 11,318 products of ``Ebay_train.txt`` train, the 60,502 of
the other 11,316 of ``Ebay_test.txt`` test (pytorch-metric-learning's ``StanfordOnlineProducts`` reads the same).
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
    unique_ids,
)
from simlearn.data.image_files import FileTable

#: The header line of both list files.
HEADER = ("image_id", "class_id", "super_class_id", "path")


class SOPDataModule(BenchmarkDataModule):
    """Stanford Online Products from ``Ebay_train.txt`` and ``Ebay_test.txt`` (header ``image_id class_id
    super_class_id path``, then one image per line, ids 1-based, paths relative to the dataset's folder such as
    ``bicycle_final/111085122871_0.JPG``). ``root`` is the unpacked ``Stanford_Online_Products/`` or its parent.

    Label fields: ``class`` (the product, named by its id) and ``super_class`` (its category, named by its folder
    without ``_final``: bicycle, cabinet, chair, coffee_maker, fan, kettle, lamp, mug, sofa, stapler, table, toaster).
    """

    name = "sop"
    title = "Stanford Online Products"
    url = "https://cvgl.stanford.edu/projects/lifted_struct/"
    download = "Stanford_Online_Products.zip (2.9 GB)"
    folders = ("Stanford_Online_Products",)
    lists = (("Ebay_train.txt",), ("Ebay_test.txt",))
    images = "<category>_final/<image>.JPG"

    def read(self, folder: Path) -> FileTable:
        paths: list[str] = []
        class_ids: list[int] = []
        super_ids: list[int] = []
        splits: list[str] = []
        super_names: dict[int, str] = {}
        for split in ("train", "test"):
            path = folder / f"Ebay_{split}.txt"
            lines = read_lines(path)
            if not lines or tuple(lines[0][1]) != HEADER:
                got = lines[0][1] if lines else "an empty file"
                raise malformed(path, lines[0][0] if lines else 1, f"the header {' '.join(HEADER)!r}", got)
            ids = []
            for line, parts in lines[1:]:
                image_id, class_id, super_id, image = fields_of(path, line, parts, HEADER)
                ids.append((line, positive_int(image_id, path, line, "an image id")))
                class_ids.append(positive_int(class_id, path, line, "a class id"))
                super_ids.append(positive_int(super_id, path, line, "a super class id"))
                # the category's folder names it (bicycle_final/… → bicycle); the first image of each names it
                category = image.split("/")[0].removesuffix("_final") if "/" in image else str(super_ids[-1])
                super_names.setdefault(super_ids[-1], category)
                paths.append(os.path.join(folder, image))
                splits.append(split)
            unique_ids(ids, path, "image id")
        classes, class_names = coded_ids(class_ids)
        supers, names = coded_ids(super_ids, super_names)
        return FileTable(
            paths=paths,
            fields={"class": classes, "super_class": supers},
            names={"class": class_names, "super_class": names},
            split=splits,
        )
