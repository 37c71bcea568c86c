"""In-Shop Clothes Retrieval (DeepFashion, Liu et al., CVPR 2016): 52,712 photos of 7,982 clothing items, read from
``list_eval_partition.txt``.

The official split: the 25,882 images of 3,997 items marked ``train`` train; the 3,985 other items are split into
14,218 ``query`` and 12,612 ``gallery`` images, and each query is searched among the gallery (the protocol of the
dataset's paper, mmpretrain's ``InShop`` and open-metric-learning's converter).
"""

from __future__ import annotations

import os
from pathlib import Path

from simlearn.data.base import encode
from simlearn.data.benchmarks import BenchmarkDataModule, fields_of, malformed, positive_int, read_lines
from simlearn.data.image_files import FileTable
from simlearn.errors import UserError

#: The header (second line) of list_eval_partition.txt.
HEADER = ("image_name", "item_id", "evaluation_status")
#: The values of evaluation_status, which are the items' splits.
STATUSES = ("train", "query", "gallery")


class InShopDataModule(BenchmarkDataModule):
    """In-Shop Clothes from ``list_eval_partition.txt`` (in ``Eval/`` or beside it; line 1: the number of images,
    line 2: the header ``image_name item_id evaluation_status``, then one image per line with status ``train``,
    ``query`` or ``gallery``) and the images it names (``img/WOMEN/Dresses/id_00000002/02_1_front.jpg``), relative to
    the dataset's folder or to its ``Img/``. ``root`` is the dataset's folder (``In-shop Clothes Retrieval
    Benchmark/``) or its parent.

    Label fields: ``class`` (the item, ``id_00000002``) and ``category`` (``WOMEN/Dresses``: 23 of them).
    """

    name = "inshop"
    title = "In-Shop Clothes Retrieval"
    url = "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"
    download = "Img/img.zip and Eval/list_eval_partition.txt (0.8 GB)"
    folders = ("In-shop Clothes Retrieval Benchmark",)
    lists = (("Eval/list_eval_partition.txt", "list_eval_partition.txt"),)
    images = "img/<gender>/<category>/<item>/<image>.jpg (or Img/img/…)"

    def read(self, folder: Path) -> FileTable:
        path = self.list_path(folder, self.lists[0])
        lines = read_lines(path)
        if len(lines) < 2:
            raise malformed(path, len(lines) + 1, "the number of images, then the header line", "end of file")
        count_line, count_parts = lines[0]
        if len(count_parts) != 1:
            raise malformed(path, count_line, "the number of images", count_parts)
        count = positive_int(count_parts[0], path, count_line, "the number of images")
        header_line, header = lines[1]
        if tuple(header) != HEADER:
            raise malformed(path, header_line, f"the header {' '.join(HEADER)!r}", header)
        rows = lines[2:]
        if len(rows) != count:
            raise UserError(
                f"{path}, line {count_line}: says {count} images but {len(rows)} are listed; the file is cut short "
                f"or edited. Replace it with the dataset's own."
            )
        names, items, statuses, lines_of = [], [], [], []
        for line, parts in rows:
            image, item, status = fields_of(path, line, parts, HEADER)
            if status not in STATUSES:
                raise malformed(path, line, f"an evaluation_status of {', '.join(STATUSES)}", status)
            names.append(image)
            items.append(item)
            statuses.append(status)
            lines_of.append(line)
        if self.official_split:
            check_queries_have_gallery(path, items, statuses, lines_of)
        base = image_folder(folder, names[0])
        classes, class_names = encode(items)
        categories, category_names = encode([category_of(name) for name in names])
        return FileTable(
            paths=[os.path.join(base, name) for name in names],
            fields={"class": classes, "category": categories},
            names={"class": class_names, "category": category_names},
            split=statuses,
        )


def image_folder(folder: Path, example: str) -> Path:
    """The folder the image names are relative to: the dataset's folder, or its ``Img/`` (how the archive unpacks)."""
    top = example.split("/")[0]
    for candidate in (folder, folder / "Img"):
        if (candidate / top).is_dir():
            return candidate
    return folder


def category_of(image: str) -> str:
    """The category of an image name: ``img/WOMEN/Dresses/id_…/…jpg`` → ``WOMEN/Dresses``."""
    parts = image.split("/")
    return "/".join(parts[1:-2]) if len(parts) > 3 else "unknown"


def check_queries_have_gallery(path: Path, items: list[str], statuses: list[str], lines: list[int]) -> None:
    """Refuse queries whose item has no gallery image: they could never be answered, and would count as misses."""
    gallery = {item for item, status in zip(items, statuses, strict=True) if status == "gallery"}
    lone = [(line, item) for item, status, line in zip(items, statuses, lines, strict=True) if status == "query"]
    lone = [(line, item) for line, item in lone if item not in gallery]
    if lone:
        line, item = lone[0]
        items_without = len({item for _, item in lone})
        raise UserError(
            f"{path}: {len(lone)} query images of {items_without} items have no gallery image of their item, e.g. "
            f"line {line} (item {item}); "
            f"every query item needs gallery images. Replace the file with the dataset's own, or set "
            f"data.official_split=false to split the items by the seed instead."
        )
