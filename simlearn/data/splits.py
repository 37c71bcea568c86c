"""Seeded, stratified train/val/test splits, their caps and checks, and the per-class batch sampler.

Pure functions of labels and a seed, shared by every data module (:class:`simlearn.data.base.EmbeddingDataModule`):
the same labels and seed give the same splits on every machine, so runs and figures can be compared.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from simlearn.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: The splits a source may fix per item: the three above, and the two halves of a query/gallery test (In-Shop).
FIXED_SPLITS = (*SPLITS, "query", "gallery")
#: How items are split: ``item`` (seeded per class: every class in every split, closed-set retrieval) or ``class``
#: (whole classes to train / val / test: the test classes are never trained on, as the field's benchmarks measure).
SPLIT_BY = ("item", "class")


def check_batches_and_fractions(
    batch_size: int, eval_batch_size: int, val_fraction: float, test_fraction: float
) -> None:
    """Reject batch sizes below 1 and split fractions that are out of [0, 1) or leave nothing to train on."""
    for key, value in {"batch_size": batch_size, "eval_batch_size": eval_batch_size}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"data.{key} must be a positive integer, got {value!r}.")
    for key, value in {"val_fraction": val_fraction, "test_fraction": test_fraction}.items():
        if not 0.0 <= value < 1.0:
            raise UserError(f"data.{key} must be in [0, 1), got {value!r}.")
    if val_fraction + test_fraction >= 1.0:
        raise UserError(
            f"data.val_fraction + data.test_fraction must leave items to train on, got "
            f"{val_fraction} + {test_fraction} >= 1."
        )


def split_generator(seed: int, split: str) -> torch.Generator:
    """The generator that draws the capped subset (``data.max_<split>``) of one split."""
    return torch.Generator().manual_seed(seed * 1000 + FIXED_SPLITS.index(split))


def stratified_split(
    labels: torch.Tensor, keep: torch.Tensor, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, torch.Tensor]:
    """Per class: a seeded permutation cut into test / val / train.

    ``labels`` holds one class id per item and ``keep`` marks the items to split; returns the sorted item indices of
    each split. Each class contributes ``round(n × fraction)`` items to val and test, so the splits are stratified,
    and the result depends only on the labels and the seed. Classes are visited in the order of their ids, each
    drawing its permutation from the one generator.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for label in labels[keep].unique().tolist():
        members = torch.nonzero(keep & (labels == label)).flatten().numpy()
        n_test = round(len(members) * test_fraction)
        n_val = round(len(members) * val_fraction)
        members = rng.permutation(members)
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    return {
        split: torch.from_numpy(np.sort(np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64))).long()
        for split, chunks in parts.items()
    }


def min_class_size(fraction: float) -> int:
    """The fewest items a class needs for the seeded split to give it at least one item of a split that takes
    ``fraction`` of each class (``round(n × fraction) ≥ 1``; Python rounds 0.5 to 0)."""
    n = max(1, math.floor(0.5 / fraction))
    while round(n * fraction) < 1:
        n += 1
    return n


def warn_small_classes(
    labels: torch.Tensor,
    seeded: torch.Tensor,
    splits: Mapping[str, torch.Tensor],
    class_names: Sequence[str],
    name: str,
    val_fraction: float,
    test_fraction: float,
) -> list[str]:
    """Warn once about the classes that the seeded split left out of val or test because they have too few items.

    ``seeded`` marks the items the seeded split was given and ``splits`` holds every split before ``data.max_*``
    caps (items a source assigns to a split count too, so a class that reaches test that way is not reported).
    Such a class is trained on but never evaluated there, so its absence would otherwise go unnoticed in the
    metrics. Returns the names of the reported classes.
    """
    needs = {split: min_class_size(f) for split, f in (("val", val_fraction), ("test", test_fraction)) if f > 0}
    seeded_classes = labels[seeded].unique().tolist()
    missing: dict[str, list[str]] = {}
    for split in needs:
        present = set(labels[splits[split]].unique().tolist())
        for label in seeded_classes:
            if label not in present:
                missing.setdefault(class_names[label], []).append(split)
    if not missing:
        return []
    names = sorted(missing)
    # the classes drop out of the val/test metrics as silently as lone queries are left out of retrieval
    # (num_lone_queries), so say once how many and which
    everywhere = all(len(missing[n]) == len(needs) for n in names)
    where = (
        "trained on only"
        if everywhere
        else "trained on but missing from "
        + ", ".join(f"{split}: {some_names([n for n in names if split in missing[n]])}" for split in needs)
    )
    log.warning(
        "data '%s': %d %s too few images to appear in val/test (need %s): %s; %s %s. Add images or leave %s "
        "out with data.classes.",
        name,
        len(names),
        "class has" if len(names) == 1 else "classes have",
        ", ".join(f"≥ {n} for {split}" for split, n in needs.items()),
        some_names(names),
        "it is" if len(names) == 1 else "they are",
        where,
        "it" if len(names) == 1 else "them",
    )
    return names


def some_names(names: Sequence[str], limit: int = 20) -> str:
    """At most ``limit`` names for a log line (a thousand one-image classes would flood it)."""
    return str(list(names[:limit])) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def cap_split(index: torch.Tensor, limit: int | None, seed: int, split: str) -> torch.Tensor:
    """A seeded random subset of at most ``limit`` items of a split (all of them when ``limit`` is None), sorted."""
    if limit is None:
        return index
    return index[torch.randperm(len(index), generator=split_generator(seed, split))[:limit]].sort().values


def label_subset(index: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """``data.label_fraction``: of the items ``index``, a seeded ``fraction`` of each class (``round(n × fraction)``
    items, at least one per class), sorted. Classes are visited in the order of their labels, each drawing from the
    one generator, so the subset depends only on the labels, the fraction and the seed; all of ``index`` when
    ``fraction`` is 1."""
    if fraction >= 1:
        return index
    generator = torch.Generator().manual_seed(seed * 1000 + 17)  # not the caps' generators (split_generator)
    own = labels[index]
    kept = []
    for label in own.unique().tolist():
        members = index[own == label]
        count = max(1, round(len(members) * fraction))
        kept.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(kept).sort().values if kept else index


def cap_query_gallery(
    query: torch.Tensor, gallery: torch.Tensor, labels: torch.Tensor, limit: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``data.max_test`` for a query/gallery test: at most about ``limit`` items in all, queries and gallery in the
    proportion the data has them (seeded), and every kept query keeps at least one gallery item of its class (so a
    kept query always has something to find; the gallery can exceed its share by those). Unchanged when the test
    holds ``limit`` items or fewer, or ``limit`` is None."""
    if limit is None or len(query) + len(gallery) <= limit:
        return query, gallery
    queries = max(1, round(limit * len(query) / (len(query) + len(gallery))))
    query = cap_split(query, queries, seed, "query")
    order = gallery[torch.randperm(len(gallery), generator=split_generator(seed, "gallery"))]
    wanted = set(labels[query].tolist())
    first = {}  # the first gallery item (in the seeded order) of each kept query's class
    for i, label in zip(order.tolist(), labels[order].tolist(), strict=True):
        if label in wanted and label not in first:
            first[label] = i
    kept = set(first.values())
    rest = [i for i in order.tolist() if i not in kept][: max(0, limit - queries - len(kept))]
    return query, torch.tensor(sorted([*kept, *rest]), dtype=torch.long)


def check_split_classes(
    labels: torch.Tensor,
    splits: Mapping[str, torch.Tensor],
    class_names: Sequence[str],
    name: str,
    val_fraction: float,
    by_class: bool = False,
) -> None:
    """Every split needs at least 2 classes. An empty val split is fine when ``val_fraction`` is 0, and in a class
    split (``by_class``: its training classes were too few, or all listed, to give val two of them: logged)."""
    for split, index in splits.items():
        present = labels[index].unique()
        if split == "val" and len(index) == 0 and (val_fraction == 0 or by_class):
            if val_fraction > 0:
                log.warning(
                    "data '%s': no val classes (too few unlisted training classes to give val two of them); training "
                    "runs without validation and tests its last epoch. List some with data.val_classes.",
                    name,
                )
            continue
        if len(present) < 2:
            names = [class_names[i] for i in present.tolist()]
            if by_class:  # whole classes per split: what gives a split classes is its list or its fraction
                more = f"raise data.{split}_fraction" if split != "train" else "give val and test fewer classes"
                fix = f"list at least 2 classes in data.{split}_classes (data.split_by=class) or {more}"
            else:
                fix = f"Select more classes (data.classes) or raise data.max_{split}"
            raise UserError(
                f"the {split} split of data '{name}' has {len(index)} items in {len(present)} class(es) "
                f"{names}; similarity learning and retrieval need at least 2 classes. {fix[0].upper()}{fix[1:]}."
            )


def check_m_per_class(labels: torch.Tensor, m: int, batch_size: int) -> None:
    """A UserError when batches of ``batch_size`` cannot hold ``m`` items of each class they draw."""
    num_classes = len(labels.unique())
    if batch_size % m or m * num_classes < batch_size:
        raise UserError(
            f"data.m_per_class={m} does not fit data.batch_size={batch_size} with {num_classes} classes: "
            f"the batch size must be a multiple of m_per_class and at most m_per_class × classes "
            f"({m * num_classes}). Example: data.m_per_class={max(1, batch_size // num_classes)} with "
            f"data.batch_size={max(1, batch_size // num_classes) * num_classes}."
        )


def m_per_class_sampler(labels: torch.Tensor, m: int, batch_size: int) -> Sampler[int]:
    """PML's ``MPerClassSampler`` (m items of each class per batch), or a UserError when m does not fit the batch."""
    from pytorch_metric_learning.samplers import MPerClassSampler

    check_m_per_class(labels, m, batch_size)
    return MPerClassSampler(labels.numpy(), m=m, batch_size=batch_size, length_before_new_iter=len(labels))


def split_class_count(available: int, fraction: float) -> int:
    """How many of ``available`` classes a class split takes for a split of ``fraction``: ``round(n × fraction)``,
    but never one (retrieval needs two classes): one becomes two when that leaves two classes to train on, else 0."""
    n = round(available * fraction)
    if n == 1:
        n = 2 if available - 2 >= 2 else 0
    return n


def class_split(
    names: Sequence[str],
    fixed: Mapping[str, str],
    listed: Mapping[str, Sequence[str]],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, list[str]]:
    """Whole classes to train / val / test (``split_by=class``); returns each split's class names in ``names`` order.

    ``names`` are the classes to split, in the source's order; ``fixed`` maps the classes whose every item a source
    fixes to one split (an official split: CUB, Cars196, SOP) to it ("query"/"gallery" classes count as test);
    ``listed`` holds the classes the config lists per split (``data.train_classes`` …). The other classes are free:
    unless test classes are fixed or listed, ``round(C × test_fraction)`` of all C classes are drawn from them for
    test; unless val classes are, ``round(T × val_fraction)`` of the T classes left for training are drawn for val
    (so an official train/test split gets its val classes from its training classes); the rest train. A train list
    is the whole training set: with it, the classes no list names go to test (to val when test is listed). Draws are
    seeded (one permutation of the free classes, then of the training ones) and need no items, so the same classes
    and seed give the same split everywhere.
    """
    role = {**fixed}
    for split, chosen in listed.items():
        role.update({name: split for name in chosen})
    rng = np.random.default_rng(seed)
    free = [n for n in names if n not in role]
    if "train" in listed:
        # a train list is the whole training set: the classes no list names are unseen, to test (to val when test
        # is listed too), never trained on
        rest = "val" if "test" in listed else "test"
        role.update({name: rest for name in free})
        free = []
    if not any(r == "test" for r in role.values()):
        count = min(split_class_count(len(names), test_fraction), len(free))
        for name in rng.permutation(np.array(free, dtype=object))[:count] if count else []:
            role[name] = "test"
    for name in names:
        role.setdefault(name, "train")
    if not any(r == "val" for r in role.values()):
        # val from the training classes that no source or list fixed (fixed train classes when there are none)
        movable = [n for n in names if role[n] == "train" and n not in listed.get("train", ())]
        pool = [n for n in movable if n not in fixed] or movable
        count = min(split_class_count(sum(r == "train" for r in role.values()), val_fraction), len(pool))
        for name in rng.permutation(np.array(pool, dtype=object))[:count] if count else []:
            role[name] = "val"
    return {split: [n for n in names if role[n] == split] for split in SPLITS}
