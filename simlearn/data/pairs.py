"""Pair labels: a CSV of image pairs known to be similar (1) or not (0), and no class labels.

A batch of n pairs holds both images of each pair, 2n images in ``image`` (a₀, b₀, a₁, b₁, …), with per-image
fields ``pair`` (the pair's row in the CSV) and ``similar`` (its label), and ``index`` = 2 × row + side, unique
per image. :class:`simlearn.losses.PairTask` trains on exactly these pairs and
:class:`simlearn.evaluation.PairEvaluator` scores them.
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
    read_csv,
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
        rows = read_csv(self.csv, required=("path_a", "path_b", "similar"), what="data.csv")
        paths_a = [str(self.root / row["path_a"].strip()) for row in rows]
        paths_b = [str(self.root / row["path_b"].strip()) for row in rows]
        values = [row["similar"].strip() for row in rows]
        bad = sorted({v for v in values if v not in ("0", "1")})
        if bad:
            raise UserError(f"{self.csv}: column 'similar' must hold 0 or 1, found {bad[:5]}.")
        similar = torch.tensor([int(v) for v in values], dtype=torch.long)
        keep = torch.ones(len(rows), dtype=torch.bool)
        if self.verify_files:
            unique = sorted(set(paths_a) | set(paths_b))
            ok = dict(zip(unique, readable(unique), strict=True))
            keep = torch.tensor([ok[a] and ok[b] for a, b in zip(paths_a, paths_b, strict=True)], dtype=torch.bool)
            if not keep.all():
                unreadable = [p for p in unique if not ok[p]]
                log.warning(
                    "data '%s': skipped %d of %d pairs whose images could not be read (%d files, e.g. %s)",
                    self.name,
                    int((~keep).sum()),
                    len(rows),
                    len(unreadable),
                    ", ".join(unreadable[:3]),
                )
        given = [row.get("split", "").strip() or None for row in rows]
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
