"""Pair labels: a CSV of image pairs known to be similar (1) or not (0), and no class labels.

A batch of n pairs holds both images of each pair, 2n images in ``image`` (a₀, b₀, a₁, b₁, …), with per-image
fields ``pair`` (the pair's row in the CSV) and ``similar`` (its label), and ``index`` = 2 × row + side, unique
per image. :class:`simlearn.losses.PairTask` trains on exactly these pairs and
:class:`simlearn.evaluation.PairEvaluator` scores them.

A pair is in one split only. Pairs are matched by their images' normalised paths in either order ((a, b) and
(b, a) are one pair): exact repeats (same ``similar`` and split) are dropped with one counted warning, and a pair
listed with two targets or two splits is refused. An *image* may be in pairs of different splits (the seeded split
of pairs that share images cannot avoid it, and new pairings of known images are a legitimate test); how many val
and test pairs share an image with a training pair is said in one warning, since it flatters those metrics.

Pairs are a source of :class:`~simlearn.data.base.EmbeddingDataModule` like any other: its items are the pairs
(:class:`PairTable`) and its label field ``similar`` has the two "classes" dissimilar and similar, so the seeded
split, the caps, augmentation and the loaders are the shared ones, stratified by ``similar``. What needs real class
labels (``classes``, ``probe_classes``, ``m_per_class``) is refused, and the split check asks for both kinds of pair.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate

from simlearn.data.base import Items, Preprocessing, SplitDataset
from simlearn.data.image_files import (
    FileTable,
    ImageDecoder,
    ImageFileDataModule,
    load_image,
    read_csv_lines,
    readable,
)
from simlearn.errors import UserError

log = logging.getLogger(__name__)

PAIR_CLASS_NAMES = ["dissimilar", "similar"]


def collate_pairs(items: Sequence[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor]:
    """Concatenate the pairs of a batch into 2n images, leaving out pairs with an undecodable image (None)."""
    kept = [item for item in items if item is not None]
    if not kept:
        raise UserError(
            f"none of the {len(items)} pairs of a batch could be decoded; check the image files (see the warnings)."
        )
    return {key: value.flatten(0, 1) for key, value in default_collate(kept).items()}


class PairDataset(SplitDataset):
    """Pairs of image files; item = ``{"image": (2, C, H, W), "index", "pair", "similar": (2,)}``.

    ``fields`` (``pair``, ``similar``) hold one value per pair of the table and ``indices`` the pairs of this split;
    :meth:`labels` gives them per pair. ``paths`` holds the first and the second image of every pair.
    """

    collate = staticmethod(collate_pairs)

    def __init__(
        self,
        paths: tuple[Sequence[str], Sequence[str]],
        fields: Mapping[str, torch.Tensor],
        indices: torch.Tensor,
        transform: Callable,
        decoder: ImageDecoder,
    ) -> None:
        self.paths = (list(paths[0]), list(paths[1]))
        self.fields = dict(fields)
        self.indices = indices
        self.transform = transform
        self.decoder = decoder

    def __getitem__(self, position: int) -> dict[str, torch.Tensor] | None:
        row = int(self.indices[position])
        images = [load_image(paths[row], self.transform, self.decoder) for paths in self.paths]
        if any(image is None for image in images):
            return None
        return {
            "image": torch.stack(images),
            "index": torch.tensor([2 * row, 2 * row + 1]),
            "pair": torch.tensor([row, row]),
            "similar": self.fields["similar"][row].repeat(2),
        }

    def paths_of(self, index: Sequence[int]) -> list[str]:
        """The file of each image: image ``index`` is side ``index % 2`` of pair ``index // 2``."""
        return [self.paths[int(i) % 2][int(i) // 2] for i in index]


@dataclass(kw_only=True)
class PairTable(FileTable):
    """Pairs of image files, one row per CSV row: ``paths`` holds the first images, ``second`` the second ones, the
    label fields ``pair`` (the row) and ``similar``, and ``first_listed`` marks the first row of each pair (a repeat,
    in either order, is kept in the table so that ``pair`` stays the CSV row, but never used)."""

    # a pair is similar or not: no classes to split by, nor to warn about (check_splits wants both kinds per split)
    has_classes = False

    second: list[str]
    first_listed: torch.Tensor

    def dataset(self, indices: torch.Tensor, preprocessing: Preprocessing, augment: Sequence[Callable]) -> SplitDataset:
        transform, decoder = self.transform(preprocessing, augment), self.decoder(preprocessing, augment)
        return PairDataset((self.paths, self.second), self.fields, indices, transform, decoder)


class PairsCSVDataModule(ImageFileDataModule):
    """Pairs listed in a CSV with columns ``path_a``, ``path_b``, ``similar`` (1 similar, 0 not) and optionally
    ``split`` (train / val / test, or empty for the seeded split, stratified by ``similar``). Relative paths are
    relative to ``root`` (default: the CSV's folder). ``batch_size`` and ``eval_batch_size`` count pairs.

    Leaks (see the module docstring): a repeated pair, in either order, is used once (counted warning); a pair with
    two targets or in two splits is a UserError; val/test pairs that share an image with a training pair are
    counted in a warning but kept. ``pair`` is the pair's data row in the CSV (0-based), so a dropped repeat leaves a
    gap in the pair ids.
    """

    name = "pairs_csv"

    def __init__(
        self,
        csv: str | os.PathLike,
        root: str | os.PathLike | None = None,
        label_field: str = "similar",
        num_classes: int | None = 2,
        **kwargs: Any,
    ) -> None:
        if label_field != "similar":
            raise UserError(
                f"data '{self.name}' has the label field 'similar' only, got data.label_field={label_field!r}."
            )
        if kwargs.get("m_per_class"):
            raise UserError("data.m_per_class needs class labels; pair data has none. Set data.m_per_class=null.")
        for key in ("classes", "probe_classes"):
            if kwargs.get(key):
                raise UserError(f"data.{key} needs class labels; pair data has none. Set data.{key}=null.")
        super().__init__(label_field=label_field, num_classes=num_classes, **kwargs)
        self.csv = Path(csv).expanduser()
        self.root = Path(root).expanduser() if root is not None else self.csv.parent

    def scan(self, wanted: Sequence[str] | None) -> PairTable:
        rows, lines = read_csv_lines(self.csv, required=("path_a", "path_b", "similar"), what="data.csv")
        # normalised, so that every spelling of a file is the same image (pair and image leak checks compare them)
        paths_a = [os.path.normpath(self.root / row["path_a"].strip()) for row in rows]
        paths_b = [os.path.normpath(self.root / row["path_b"].strip()) for row in rows]
        values = [row["similar"].strip() for row in rows]
        bad = sorted({v for v in values if v not in ("0", "1")})
        if bad:
            raise UserError(f"{self.csv}: column 'similar' must hold 0 or 1, found {bad[:5]}.")
        given = [row.get("split", "").strip() or None for row in rows]
        return PairTable(
            paths=paths_a,
            second=paths_b,
            fields={"pair": torch.arange(len(rows)), "similar": torch.tensor([int(v) for v in values])},
            names={"similar": list(PAIR_CLASS_NAMES)},
            split=given,
            first_listed=self._first_of_each_pair(rows, lines, paths_a, paths_b, values, given),
        )

    def usable(self, items: Items, wanted: torch.Tensor) -> torch.Tensor:
        """The first row of each pair whose two images can be read."""
        usable = wanted & items.first_listed
        if not self.verify_files:
            return usable
        unique = sorted(set(items.paths) | set(items.second))
        ok = dict(zip(unique, readable(unique), strict=True))
        readable_pairs = [ok[a] and ok[b] for a, b in zip(items.paths, items.second, strict=True)]
        if not all(readable_pairs):
            unreadable = [p for p in unique if not ok[p]]
            log.warning(
                "data '%s': skipped %d of %d pairs whose images could not be read (%d files, e.g. %s)",
                self.name,
                readable_pairs.count(False),
                len(items),
                len(unreadable),
                ", ".join(unreadable[:3]),
            )
        return usable & torch.tensor(readable_pairs, dtype=torch.bool)

    def check_splits(self, items: Items, labels: torch.Tensor, splits: Mapping[str, torch.Tensor]) -> None:
        """Every split needs similar and dissimilar pairs (an empty val split is fine when ``val_fraction`` is 0);
        val/test pairs with an image of a training pair are counted in a warning."""
        for split, index in splits.items():
            kinds = labels[index].unique().tolist()
            if len(kinds) < 2 and not (split == "val" and len(index) == 0 and self.val_fraction == 0):
                raise UserError(
                    f"the {split} split of data '{self.name}' has {len(index)} pairs, none of them "
                    f"{'similar' if kinds == [0] else 'dissimilar' if kinds == [1] else 'similar or dissimilar'}; "
                    f"training and ROC-AUC need both kinds. Add pairs to {self.csv} or change the split fractions."
                )
        self._warn_shared_images(items.paths, items.second, splits)

    def _first_of_each_pair(
        self,
        rows: Sequence[dict[str, str]],
        lines: Sequence[int],
        paths_a: Sequence[str],
        paths_b: Sequence[str],
        values: Sequence[str],
        given: Sequence[str | None],
    ) -> torch.Tensor:
        """Which rows to keep: the first row of each pair, in either order. Repeats with the same target and split
        are dropped with one counted warning; a pair given two targets or two splits is refused."""
        first: dict[tuple[str, str], int] = {}
        keep = torch.ones(len(rows), dtype=torch.bool)
        repeats: list[tuple[int, int]] = []  # (row, the row it repeats)
        for i, (a, b) in enumerate(zip(paths_a, paths_b, strict=True)):
            key = (a, b) if a <= b else (b, a)  # (a, b) and (b, a) are one pair
            j = first.setdefault(key, i)
            if j == i:
                continue
            keep[i] = False
            if (values[j], given[j]) == (values[i], given[i]):
                repeats.append((i, j))
                continue
            pair = f"{self.csv}: the pair {rows[j]['path_a'].strip()!r}, {rows[j]['path_b'].strip()!r} is listed with"
            # (a, b) and (b, a) are one pair: say so when that is why two rows that look different clash
            turned = " as (b, a)" if (paths_a[i], paths_b[i]) != (paths_a[j], paths_b[j]) else ""
            if values[j] != values[i]:
                raise UserError(
                    f"{pair} similar={values[j]} (line {lines[j]}) and similar={values[i]} (line {lines[i]}{turned}); "
                    f"a pair has one target. Keep one of the rows."
                )
            first_split = f"split {given[j]!r}" if given[j] else "no split"
            other = "no split" if not given[i] else repr(given[i]) if given[j] else f"split {given[i]!r}"
            raise UserError(
                f"{pair} {first_split} (line {lines[j]}) and {other} (line {lines[i]}{turned}); a pair must be in one "
                f"split only, else val/test score pairs that were trained on. Keep one of the rows (split: train, "
                f"val, test, or empty for the seeded split)."
            )
        if repeats:
            i, j = repeats[0]
            log.warning(
                "data.csv=%s: %d duplicate rows (same pair in either order, same similar and split) ignored, e.g. "
                "line %d repeats line %d (%s, %s)",
                self.csv,
                len(repeats),
                lines[i],
                lines[j],
                rows[i]["path_a"].strip(),
                rows[i]["path_b"].strip(),
            )
        return keep

    def _warn_shared_images(
        self, paths_a: Sequence[str], paths_b: Sequence[str], splits: Mapping[str, torch.Tensor]
    ) -> None:
        """One warning counting the val/test pairs with an image that is also in a training pair: the model has
        seen that image, so those pairs' scores are flattered (the pairs themselves are never in two splits)."""
        trained = {p for i in splits["train"].tolist() for p in (paths_a[i], paths_b[i])}
        counts = []
        example = None
        for split in ("val", "test"):
            index = splits[split].tolist()
            shared = [i for i in index if paths_a[i] in trained or paths_b[i] in trained]
            if shared:
                counts.append(f"{len(shared)} of {len(index)} {split} pairs")
                i = shared[0]
                example = example or (paths_a[i] if paths_a[i] in trained else paths_b[i])
        if counts:
            log.warning(
                "data '%s': %s share an image with a training pair (e.g. %s), so their scores are flattered by "
                "images seen in training; to hold images out, give each pair a split in %s's split column with no "
                "image in pairs of two splits.",
                self.name,
                " and ".join(counts),
                example,
                self.csv,
            )
