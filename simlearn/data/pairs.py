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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from simlearn.data.image_files import (
    ImageFileDataModule,
    image_transform,
    load_image,
    read_csv_lines,
    readable,
)
from simlearn.data.in_memory import SPLITS, cap_split, stratified_split
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


class PairDataset(Dataset):
    """Pairs of image files; item = ``{"image": (2, C, H, W), "index", "pair", "similar": (2,)}``.

    ``fields`` (``pair``, ``similar``) hold one value per pair of the table and ``indices`` the pairs of this split;
    :meth:`labels` gives them per pair.
    """

    def __init__(
        self,
        paths_a: Sequence[str],
        paths_b: Sequence[str],
        similar: torch.Tensor,
        indices: torch.Tensor,
        transform: Callable,
        channels: int,
        size_hint: int | None = None,
    ) -> None:
        self.paths = (list(paths_a), list(paths_b))
        self.fields = {"pair": torch.arange(len(similar)), "similar": similar}
        self.indices = indices
        self.transform = transform
        self.channels = channels
        self.size_hint = size_hint

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor] | None:
        row = int(self.indices[position])
        images = [load_image(paths[row], self.transform, self.channels, self.size_hint) for paths in self.paths]
        if any(image is None for image in images):
            return None
        return {
            "image": torch.stack(images),
            "index": torch.tensor([2 * row, 2 * row + 1]),
            "pair": torch.tensor([row, row]),
            "similar": self.fields["similar"][row].repeat(2),
        }

    def labels(self, field: str) -> torch.Tensor:
        return self.fields[field][self.indices]


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
    collate_fn = staticmethod(collate_pairs)

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

    @property
    def label_fields(self) -> list[str]:
        return ["pair", "similar"]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        rows, lines = read_csv_lines(self.csv, required=("path_a", "path_b", "similar"), what="data.csv")
        # normalised, so that every spelling of a file is the same image (pair and image leak checks compare them)
        paths_a = [os.path.normpath(self.root / row["path_a"].strip()) for row in rows]
        paths_b = [os.path.normpath(self.root / row["path_b"].strip()) for row in rows]
        values = [row["similar"].strip() for row in rows]
        bad = sorted({v for v in values if v not in ("0", "1")})
        if bad:
            raise UserError(f"{self.csv}: column 'similar' must hold 0 or 1, found {bad[:5]}.")
        similar = torch.tensor([int(v) for v in values], dtype=torch.long)
        given = [row.get("split", "").strip() or None for row in rows]
        keep = self._first_of_each_pair(rows, lines, paths_a, paths_b, values, given)
        if self.verify_files:
            unique = sorted(set(paths_a) | set(paths_b))
            ok = dict(zip(unique, readable(unique), strict=True))
            readable_pairs = [ok[a] and ok[b] for a, b in zip(paths_a, paths_b, strict=True)]
            keep &= torch.tensor(readable_pairs, dtype=torch.bool)
            if not all(readable_pairs):
                unreadable = [p for p in unique if not ok[p]]
                log.warning(
                    "data '%s': skipped %d of %d pairs whose images could not be read (%d files, e.g. %s)",
                    self.name,
                    readable_pairs.count(False),
                    len(rows),
                    len(unreadable),
                    ", ".join(unreadable[:3]),
                )
        unknown = sorted({s for s in given if s is not None and s not in SPLITS})
        if unknown:
            raise UserError(f"{self.csv}: column 'split' holds {unknown}; valid: {list(SPLITS)} or empty.")
        free = keep & torch.tensor([s is None for s in given], dtype=torch.bool)
        splits = stratified_split(similar, free, self.val_fraction, self.test_fraction, self.seed)
        for split in SPLITS:
            fixed = [i for i, s in enumerate(given) if s == split and keep[i]]
            index = torch.cat([splits[split], torch.tensor(fixed, dtype=torch.long)]).sort().values
            splits[split] = cap_split(index, self.limits[split], self.seed, split)
            kinds = similar[splits[split]].unique().tolist()
            if len(kinds) < 2 and not (split == "val" and len(index) == 0 and self.val_fraction == 0):
                raise UserError(
                    f"the {split} split of data '{self.name}' has {len(splits[split])} pairs, none of them "
                    f"{'similar' if kinds == [0] else 'dissimilar' if kinds == [1] else 'similar or dissimilar'}; "
                    f"training and ROC-AUC need both kinds. Add pairs to {self.csv} or change the split fractions."
                )
        self._warn_shared_images(paths_a, paths_b, splits)
        self.class_names = list(PAIR_CLASS_NAMES)
        train_transform = image_transform(self.image_size, self.channels, self.mean, self.std, self.augment)
        eval_transform = image_transform(self.image_size, self.channels, self.mean, self.std)
        hint = 2 * self.image_size
        self.datasets = {
            split: PairDataset(
                paths_a,
                paths_b,
                similar,
                index,
                train_transform if split == "train" else eval_transform,
                self.channels,
                hint,
            )
            for split, index in splits.items()
        }

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
        self, paths_a: Sequence[str], paths_b: Sequence[str], splits: dict[str, torch.Tensor]
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
