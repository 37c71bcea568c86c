"""The split of a source's items as one pure function: :func:`plan_splits` turns the items' labels, the splits a
source fixes and the config's split options (:class:`SplitOptions`) into a :class:`SplitPlan`.

The plan holds everything :meth:`simlearn.data.base.EmbeddingDataModule.setup` builds datasets from: per split the
item numbers, the training label of every item (class selection and relabelling), the probe items, the
query/gallery roles (:data:`~simlearn.fields.GALLERY_FIELD`) and how many labels are training classes. It needs no
data module, images or files, so each rule is testable on plain tensors, and the same labels, options and seed give
the same plan everywhere (the steps are those of the module docstring of :mod:`simlearn.data.base`; the primitives,
:func:`~simlearn.data.splits.stratified_split`, :func:`~simlearn.data.splits.class_split` and the caps, live in
:mod:`simlearn.data.splits`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch

from simlearn.data.splits import (
    FIXED_SPLITS,
    SPLIT_BY,
    SPLITS,
    cap_query_gallery,
    cap_split,
    class_split,
    label_subset,
    some_names,
    stratified_split,
    warn_small_classes,
)
from simlearn.errors import UserError


@dataclass(frozen=True)
class SplitOptions:
    """The config's split options (``data.*``), checked when made. Class names are spelled as the source spells
    them (the data module converts the config's values with its ``class_name``)."""

    #: the data's name in messages (``data=<name>``)
    name: str = "data"
    #: ``item`` (seeded per class) or ``class`` (whole classes per split)
    split_by: str = "item"
    #: the classes to train and evaluate on, in label order (None: every class but the probes, in the source's order)
    classes: tuple[str, ...] | None = None
    #: classes held out of train/val/test, labelled after the trained classes
    probe_classes: tuple[str, ...] = ()
    #: classes listed per split (``data.train_classes`` …; ``split_by=class`` only)
    split_classes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    #: ``data.max_<split>`` per split (None: no cap)
    limits: Mapping[str, int | None] = field(default_factory=dict)
    seed: int = 0
    #: ``data.label_fraction``: the share of each class's training items kept (at least one per class, seeded); the
    #: others are dropped from training
    label_fraction: float = 1.0

    def __post_init__(self) -> None:
        fraction = self.label_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise UserError(
                f"data.label_fraction must be in (0, 1] (the share of each class's training labels kept, e.g. "
                f"data.label_fraction=0.01), got {fraction!r}."
            )
        if self.split_by not in SPLIT_BY:
            raise UserError(
                f"data.split_by must be one of {', '.join(SPLIT_BY)}, got {self.split_by!r}: item (every class in "
                f"every split) or class (whole classes per split: test classes never trained on)."
            )
        empty = [f"data.{k}_classes" for k, v in self.split_classes.items() if len(v) == 0]
        if empty:
            raise UserError(f"{empty[0]} is an empty list; list its classes, or leave it null (drawn, seeded).")
        if self.split_classes and self.split_by != "class":
            keys = " ".join(f"data.{k}_classes" for k in self.split_classes)
            raise UserError(
                f"{keys} list whole classes per split, which needs data.split_by=class (got split_by={self.split_by})."
            )
        for key, names in (("classes", self.classes or ()), ("probe_classes", self.probe_classes)):
            if len(set(names)) != len(names):
                raise UserError(f"data.{key} lists a class twice: {list(names)}.")
        overlap = sorted(set(self.probe_classes) & set(self.classes or ()))
        if overlap:
            raise UserError(
                f"data.probe_classes {overlap} are also in data.classes; a probe class must never be trained on."
            )


@dataclass(frozen=True, eq=False)
class SplitPlan:
    """Which items go where, and under which training labels (what :func:`plan_splits` returns).

    ``labels`` holds one training label per source item: 0..C−1 for the trained classes in the order of
    ``class_names`` (under ``split_by=class`` the training classes first), C, C+1, … for the probe classes, −1 for an
    item of no split. ``indices`` maps "train", "val" and "test" to their item numbers (a query/gallery test: the
    queries, then the gallery); ``probe`` holds the probe items.
    """

    indices: Mapping[str, torch.Tensor]
    probe: torch.Tensor
    labels: torch.Tensor
    #: names of the labels 0..C−1 (trained and evaluated classes) and of the probe labels C, C+1, …
    class_names: tuple[str, ...]
    probe_class_names: tuple[str, ...]
    #: the source's names of its codes 0, 1, …: what the label arrays of written files hold
    dataset_class_names: tuple[str, ...]
    #: the source's code of each training label 0, 1, … (trained, then probe classes)
    code_of_label: np.ndarray
    #: how many labels 0..T−1 are training classes (what classifier losses are sized for)
    num_train_labels: int
    #: a query/gallery test's roles per source item (1 gallery, 0 query, −1 other; the field
    #: :data:`~simlearn.fields.GALLERY_FIELD`), None for a leave-one-out test
    is_gallery: torch.Tensor | None = None
    #: how many training items there were before ``label_fraction`` kept some of each class (``indices["train"]``
    #: holds those kept)
    train_items_before_fraction: int | None = None

    @property
    def label_names(self) -> list[str]:
        """Names of the labels 0, 1, …: the trained classes, then the probe classes."""
        return [*self.class_names, *self.probe_class_names]


def plan_splits(
    codes: torch.Tensor,
    names: Sequence[str],
    fixed: Sequence[str | None] | None,
    options: SplitOptions,
    *,
    has_classes: bool = True,
    usable: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> SplitPlan:
    """The split of items whose label field has the codes ``codes`` (one per item), named by ``names``.

    ``fixed`` is the split a source fixes per item ("train", "val", "test", "query", "gallery"; None or "" for the
    seeded split), or None for none. ``has_classes`` is false for items whose label is no class (pairs: similar or
    not), which cannot be split by class and get no small-class warning. ``usable`` maps the mask of the selected
    and probe items to those that can be used (a file source leaves out unreadable files); None: all of them.
    Bad options or data raise one :class:`UserError`.
    """
    names = list(names)
    fixed_np = fixed_split_array(fixed, len(codes), options.name)
    order = selected_classes(codes, names, options)
    roles: dict[str, list[str]] = {}
    if options.split_by == "class":
        if not has_classes:
            raise UserError(
                f"data '{options.name}' holds pairs, not classes, so it cannot be split by class; use "
                f"data.split_by=item."
            )
        whole = class_fixed_splits(codes, names, fixed_np, options.name)
        clash = [(n, split, whole[n]) for split, chosen in options.split_classes.items() for n in chosen
                 if n in whole and whole[n] != split]  # fmt: skip
        if clash:
            name, split, official = clash[0]
            raise UserError(
                f"data.{split}_classes lists {name!r}, but data '{options.name}' puts every item of it in {official} "
                f"(its official split or split column); {len(clash)} listed class(es) clash. Drop them from the "
                f"list, or set data.official_split=false where the data has that option."
            )
        roles = class_split(order, whole, options.split_classes, options.val_fraction, options.test_fraction,
                            options.seed)  # fmt: skip
        order = [name for split in SPLITS for name in roles[split]]
    probes = list(options.probe_classes)
    code_of = {name: code for code, name in enumerate(names)}
    labelled = [*order, *probes]
    relabel = torch.full((len(names),), -1, dtype=torch.long)
    for label, name in enumerate(labelled):
        relabel[code_of[name]] = label
    labels = relabel[codes]
    wanted = labels >= 0
    if usable is not None:
        wanted = usable(wanted)
    probe = wanted & (labels >= len(order))
    trained = wanted & (labels >= 0) & (labels < len(order))
    if options.split_by == "class":
        splits = _split_by_class(labels, trained, fixed_np, roles, order, len(probes), options)
    else:
        # split by the source's codes: classes are visited in the source's order, as they always were, so that
        # selecting classes does not change the split of in-memory data
        splits = _split_by_item(codes, trained, fixed_np, names, options, warn=has_classes)
    splits, is_gallery = _query_gallery(labels, splits, order, options)
    before = len(splits["train"])
    # after the caps: data.max_train bounds the training items, the fraction then keeps some of each class's labels
    splits["train"] = label_subset(splits["train"], labels, options.label_fraction, options.seed)
    return SplitPlan(
        indices=MappingProxyType(splits),  # read-only, as the rest of the plan
        probe=torch.nonzero(probe).flatten(),
        labels=labels,
        class_names=tuple(order),
        probe_class_names=tuple(probes),
        dataset_class_names=tuple(names),
        code_of_label=np.array([code_of[name] for name in labelled], dtype=np.int64),
        num_train_labels=len(roles["train"]) if options.split_by == "class" else len(order),
        is_gallery=is_gallery,
        train_items_before_fraction=before,
    )


def fixed_split_array(fixed: Sequence[str | None] | None, count: int, name: str = "data") -> np.ndarray:
    """The split the source fixes for each of ``count`` items ("" for none), checked: known splits only, query and
    gallery items together, and not beside fixed test items."""
    array = np.array([s or "" for s in fixed] if fixed is not None else [""] * count, dtype=str)
    unknown = sorted(set(array.tolist()) - {"", *FIXED_SPLITS})
    if unknown:
        raise UserError(
            f"data '{name}' assigns items to the splits {unknown} (its split column); valid: "
            f"{', '.join(FIXED_SPLITS)}, or empty for the seeded split."
        )
    present = set(array.tolist())
    if ("query" in present) != ("gallery" in present):
        raise UserError(
            f"data '{name}' fixes {'query' if 'query' in present else 'gallery'} items but no "
            f"{'gallery' if 'query' in present else 'query'} items; a query/gallery test needs both."
        )
    if {"query", "gallery"} <= present and "test" in present:
        raise UserError(f"data '{name}' fixes both test items and query/gallery items; its test is one or the other.")
    return array


def selected_classes(codes: torch.Tensor, names: Sequence[str], options: SplitOptions) -> list[str]:
    """The classes to train and evaluate on, in the order of ``options.classes`` (None: the source's order, probe
    classes left out), after checking every class the options name against ``names`` and the items' ``codes``."""
    lists = [("classes", options.classes or ()), ("probe_classes", options.probe_classes)]
    lists += [(f"{split}_classes", chosen) for split, chosen in options.split_classes.items()]
    for key, chosen in lists:
        unknown = [c for c in chosen if c not in names]
        if unknown:
            raise UserError(
                f"data.{key} names classes {unknown} that data '{options.name}' does not have; "
                f"valid: {some_names(names, 50)}."
            )
    probes = list(options.probe_classes)
    trained = list(options.classes) if options.classes is not None else [n for n in names if n not in probes]
    listed = [name for chosen in options.split_classes.values() for name in chosen]
    if len(set(listed)) != len(listed):
        twice = sorted({n for n in listed if listed.count(n) > 1})
        raise UserError(f"the classes {twice} are listed for two splits (data.<split>_classes); list each once.")
    outside = [n for n in listed if n not in trained]
    if outside:
        raise UserError(
            f"data.<split>_classes name {outside}, which are "
            + ("probe classes" if set(outside) <= set(probes) else "not in data.classes")
            + "; a listed class must be one that is trained or evaluated on."
        )
    code_of = {name: code for code, name in enumerate(names)}
    present = set(codes.unique().tolist())
    missing = [n for n in [*trained, *probes] if code_of[n] not in present]
    if missing:
        have = sorted(names[c] for c in present)
        raise UserError(f"data '{options.name}' has no images of the classes {missing}; it has {some_names(have, 50)}.")
    return trained


def class_fixed_splits(codes: torch.Tensor, names: Sequence[str], fixed: np.ndarray, name: str) -> dict[str, str]:
    """Classes whose every item the source fixes to one split (query and gallery count as test): they stay
    there under ``split_by=class``. A class with items in several splits, or some left free (MNIST's official
    test images), is split as a whole like any other class; but a class with query or gallery items must be all
    query and gallery items (a test class): else they would be tested on and trained on."""
    searched = np.isin(fixed, ["query", "gallery"])
    roles = np.where(searched, "test", fixed)
    out: dict[str, str] = {}
    codes_np = codes.numpy()
    for code in np.unique(codes_np).tolist():
        mine = codes_np == code
        kinds = set(roles[mine].tolist())
        if searched[mine].any() and kinds != {"test"}:
            others = sorted(kind or "no split" for kind in set(fixed[mine & ~searched].tolist()))
            raise UserError(
                f"data '{name}': class {names[code]!r} has query/gallery items and items of {others}; with "
                f"data.split_by=class a query/gallery class is a test class, all its items query or gallery "
                f"items. Fix the data's split, or use data.split_by=item."
            )
        if len(kinds) == 1 and "" not in kinds:
            out[names[code]] = kinds.pop()
    return out


def _split_by_class(
    labels: torch.Tensor,
    trained: torch.Tensor,
    fixed: np.ndarray,
    roles: Mapping[str, list[str]],
    class_names: Sequence[str],
    num_probes: int,
    options: SplitOptions,
) -> dict[str, torch.Tensor]:
    """Every item of a class in its class's split (query/gallery items stay query/gallery); then the caps."""
    label_of = {name: i for i, name in enumerate(class_names)}
    # probe labels (C, C+1, …) index it too: they are in no split (``trained`` leaves them out)
    split_of = torch.full((len(class_names) + num_probes,), -1, dtype=torch.long)
    for i, split in enumerate(SPLITS):
        for name in roles[split]:
            split_of[label_of[name]] = i
    role = torch.where(trained, split_of[labels.clamp(min=0)], -1)
    splits = {split: torch.nonzero(role == i).flatten() for i, split in enumerate(SPLITS)}
    for split in ("val", "test"):
        # a class evaluated on its own items: with one item, its only query has nothing to find
        values, counts = labels[splits[split]].unique(return_counts=True)
        lone = [class_names[v] for v in values[counts == 1].tolist()]
        if lone:
            raise UserError(
                f"data '{options.name}': the class split puts {len(lone)} class(es) with a single item in {split} "
                f"({some_names(lone)}); a class needs ≥ 2 items to be searched for. Leave them out with "
                f"data.classes, or list them in data.train_classes."
            )
    splits = {**splits, **_query_gallery_items(trained, fixed)}
    return {split: cap_split(index, options.limits.get(split), options.seed, split) for split, index in splits.items()}


def _split_by_item(
    codes: torch.Tensor,
    trained: torch.Tensor,
    fixed: np.ndarray,
    names: Sequence[str],
    options: SplitOptions,
    warn: bool,
) -> dict[str, torch.Tensor]:
    """The seeded per-class split of the trained items the source assigns to no split, plus those it assigns;
    then the caps ``data.max_<split>``."""
    free = trained & torch.from_numpy(fixed == "")
    splits = stratified_split(codes, free, options.val_fraction, options.test_fraction, options.seed)
    for split in SPLITS:
        assigned = torch.from_numpy(np.flatnonzero((fixed == split) & trained.numpy()))
        splits[split] = torch.cat([splits[split], assigned]).sort().values
    splits = {**splits, **_query_gallery_items(trained, fixed)}
    if warn:
        # before the caps: a class left out by data.max_<split> is the user's choice, one too small is not
        warn_small_classes(codes, free, splits, names, options.name, options.val_fraction, options.test_fraction)
    return {split: cap_split(index, options.limits.get(split), options.seed, split) for split, index in splits.items()}


def _query_gallery_items(trained: torch.Tensor, fixed: np.ndarray) -> dict[str, torch.Tensor]:
    """The source's query and gallery items (none for most sources); they replace the test split."""
    if "query" not in fixed:
        return {}
    return {
        split: torch.from_numpy(np.flatnonzero((fixed == split) & trained.numpy())) for split in ("query", "gallery")
    }


def _query_gallery(
    labels: torch.Tensor, splits: Mapping[str, torch.Tensor], class_names: Sequence[str], options: SplitOptions
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """With query and gallery items: the test split made of both (in that order) and their roles per item (1
    gallery, 0 query, −1 any other item); without them the splits unchanged and None. Queries need a gallery item
    of their class."""
    splits = dict(splits)
    if "query" not in splits:
        return splits, None
    query, gallery = splits.pop("query"), splits.pop("gallery")
    others = sorted(set(splits["test"].tolist()) - set(query.tolist()) - set(gallery.tolist()))
    if others:  # the test split is the queries and the gallery: these would silently go untested
        classes = sorted({class_names[int(labels[i])] for i in others})
        by_class = options.split_by == "class"
        given_by = "data.test_classes" if by_class else "data.test_fraction"
        raise UserError(
            f"data '{options.name}' has query and gallery items, which make its test split, but {given_by} also "
            f"gives {len(others)} other items to test (classes {some_names(classes)}); they would go untested. Mark "
            f"them query or gallery in the data, or "
            + ("drop them from data.test_classes." if by_class else "set data.test_fraction=0.")
        )
    have = set(labels[gallery].tolist())
    orphans = [int(i) for i in query.tolist() if int(labels[i]) not in have]
    if orphans:
        example = class_names[int(labels[orphans[0]])]
        raise UserError(
            f"data '{options.name}': {len(orphans)} of {len(query)} queries have no gallery item of their class "
            f"(e.g. class {example!r}); every query needs one. Check the query/gallery list of the data."
        )
    # data.max_test caps the queries and the gallery together, keeping a gallery item for each kept query
    query, gallery = cap_query_gallery(query, gallery, labels, options.limits.get("test"), options.seed)
    splits["test"] = torch.cat([query, gallery])
    role = torch.full((len(labels),), -1, dtype=torch.long)
    role[query], role[gallery] = 0, 1
    return splits, role
