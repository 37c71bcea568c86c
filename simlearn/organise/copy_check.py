"""The planted-copy check of ``simlearn-organise``: can this model tell a near-copy of an image from the image's
nearest *other* item?

A model trained to merge each class into one point scores two different images of a digit as high as an image and
its re-encoded copy, so near-duplicate groups made from its embeddings mix classmates with copies. The check makes
it visible on the gallery itself: it plants a near-copy of a sample of the gallery's image files (brightness and
contrast within ± 5 % and a JPEG re-encoding, through the one set of copy edits, :mod:`simlearn.data.copies`),
embeds each copy with the model, and counts the copies that score below the duplicate threshold against their
source, or not above the source's nearest other gallery item. A second rule catches a model that merges different
items without losing the copies' order (the untrained network: its copies beat their source's nearest other item,
but thousands of pairs of different images score ≥ 0.999 too): the share of the sampled items whose nearest other
gallery item is at cosine ≥ the threshold, the pairs of different items the threshold would report, warned about
above ``merge_share`` (:data:`MERGE_SHARE`). A gallery that is mostly genuine duplicates has a high share too, and the
warning says so. Either rule or both give one warning line. :func:`copy_scores` is the rule on embeddings (what
``scripts/bench_organise.py`` reports per model); :func:`check_copies` plants the copies of a gallery's files.
Unlike the rest of :mod:`simlearn.organise` it needs the model and the image files.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig

from simlearn.data.copies import CopyEdits, near_duplicates
from simlearn.data.images import DECODE_ERRORS, is_image_name
from simlearn.errors import UserError
from simlearn.organise.clusters import unit_embeddings
from simlearn.organise.duplicates import check_threshold
from simlearn.retrieval.exact import top_k

if TYPE_CHECKING:  # the inference model imports the data and the checkpoints: only its type is needed here
    from simlearn.inference import InferenceModel
    from simlearn.retrieval.gallery import Gallery

__all__ = [
    "CHECK_EDITS",
    "MERGE_SHARE",
    "CopyCheck",
    "check_copies",
    "check_copy_options",
    "copy_scores",
    "gallery_copy_check",
]

log = logging.getLogger(__name__)

#: cosines closer than this are a tie (float32 unit rows give cosines accurate to about 1e-7)
TIE_TOLERANCE = 1e-6

#: the copy the check plants: what a re-upload does to a picture (brightness and contrast within ± 5 %, JPEG
#: quality 75-95), no crop, shift, rotation or resize, so that any model fit for duplicates should find it
CHECK_EDITS = CopyEdits(max_crop=0.0, max_shift=0.0, max_rotation=0.0, max_photometric=0.05, min_resize=1.0)

#: warn when more of the sampled items than this have another gallery item at cosine ≥ the threshold. Measured by
#: scripts/bench_organise.py at 0.999 on 2,000 MNIST test images (README "Organising a catalogue"): 0 % for the pixels
#: and 1.4 % for the label-free model (whose pairs found are 100 % and 97.7 % planted copies), 16 % for the supervised
#: model and 95 % for the untrained network (9.9 % and 3.2 % planted); 5 % lies between, 3.6 times the label-free one
MERGE_SHARE = 0.05


@dataclass
class CopyCheck:
    """What the check measured: ``checked`` planted copies (0 with ``skipped`` saying why), the share of them whose
    cosine to their source is below ``threshold`` (``below_threshold``), not above the source's nearest other
    gallery item (``not_above_neighbour``), either (``failed``); the median cosines, and the cosine that
    ``keep_share`` of the copies reach (a threshold that would find that many) and the share of sampled items whose
    nearest other item reaches it too (the pairs of different items that threshold would add)."""

    checked: int
    threshold: float
    warn_share: float
    below_threshold: float = float("nan")
    not_above_neighbour: float = float("nan")
    failed: float = float("nan")
    median_copy_cosine: float = float("nan")
    median_neighbour_cosine: float = float("nan")
    keep_share: float = 0.9
    keep_threshold: float = float("nan")
    #: the share of the sampled items whose nearest other item is at cosine ≥ ``keep_threshold``
    neighbours_above_keep: float = float("nan")
    #: the share of the sampled items whose nearest other item is at cosine ≥ ``threshold``: pairs of different
    #: items (or genuine duplicates already in the gallery) that the threshold reports
    neighbours_above_threshold: float = float("nan")
    merge_share: float = MERGE_SHARE
    skipped: str | None = None

    @property
    def separates(self) -> bool:
        """Whether the model scores the copies above their sources' nearest other items (all but ``warn_share``)."""
        return not self.not_above_neighbour > self.warn_share

    @property
    def merges(self) -> bool:
        """Whether more than ``merge_share`` of the sampled items have another gallery item at cosine ≥ the
        threshold: the model merges different items (or the gallery is mostly copies)."""
        return self.neighbours_above_threshold > self.merge_share

    @property
    def warns(self) -> bool:
        """Whether a sizeable share (more than ``warn_share``) of the copies is not above their source's nearest
        other item, or below the threshold, or the model merges different items (:attr:`merges`)."""
        return self.checked > 0 and (not self.separates or self.below_threshold > self.warn_share or self.merges)

    def summary(self) -> dict[str, Any]:
        """The figures as organise.json holds them (NaN as null), with ``warns`` and the warning."""
        out = {
            key: (None if isinstance(value, float) and np.isnan(value) else value)
            for key, value in asdict(self).items()
        }
        out["edits"] = "brightness and contrast within ±5 %, JPEG quality 75-95 (simlearn.data.copies)"
        out["warns"] = self.warns
        out["warning"] = self.warning()
        return out

    def warning(self) -> str | None:
        """The one warning line when the model cannot separate copies from classmates, or separates them but below
        the threshold (then a lower one is the fix), or merges different items at the threshold (said first, in
        the same line, when another reason holds too); None when none."""
        if not self.warns:
            return None
        merged = ""
        if self.merges:
            merged = (
                f"copy check: {self.neighbours_above_threshold:.0%} of {self.checked} sampled gallery images have "
                f"another gallery item at cos ≥ threshold={self.threshold} (pairs of different items that threshold "
                f"reports; more than {self.merge_share:.0%}): either the gallery is mostly copies or the model merges "
                f"different images"
            )
        if self.separates and not self.below_threshold > self.warn_share:
            return merged + (
                "; its planted copies do beat their sources' nearest other items, so if these are not copies use a "
                "higher threshold or a model that keeps images apart: a label-free model (loss=simclr "
                "data.labels=none) or the pixels (embedder=pixels), README 'Organising a catalogue'."
            )
        copies = (
            f"copy check: of {self.checked} planted near-copies of gallery images (brightness/contrast ±5 %, JPEG), "
        )
        if merged:
            copies = merged + f"; and of {self.checked} planted near-copies of them (brightness/contrast ±5 %, JPEG), "
        if not self.separates:
            return (
                copies + f"{self.not_above_neighbour:.0%} score no higher against their source than the source's "
                f"nearest other item does (median cos {self.median_copy_cosine:.4f} against "
                f"{self.median_neighbour_cosine:.4f}; {self.below_threshold:.0%} below threshold={self.threshold}): "
                f"this model cannot separate copies from classmates, so its duplicate groups mix different images "
                f"or miss copies at any threshold; for duplicates use a label-free model (loss=simclr "
                f"data.labels=none; trained longer if this is one) or the pixels (embedder=pixels), which README "
                f"'Organising a catalogue' measures as the best copy finder."
            )
        return (
            copies + f"{self.below_threshold:.0%} score below threshold={self.threshold} against their source, though "
            f"{1 - self.not_above_neighbour:.0%} are above its nearest other item: lower the threshold, e.g. "
            f"threshold={self.keep_threshold:.4f} (which {self.keep_share:.0%} of these copies reach, and "
            f"{self.neighbours_above_keep:.0%} of the sampled items' nearest other items too)."
        )


def copy_scores(
    copies: np.ndarray,
    sources: np.ndarray,
    gallery: np.ndarray,
    items: np.ndarray,
    threshold: float,
    warn_share: float = 0.1,
    keep_share: float = 0.9,
    merge_share: float = MERGE_SHARE,
) -> CopyCheck:
    """The check on embeddings: ``copies`` (M, d) of the gallery items ``items`` (M,), whose own embeddings are
    ``sources`` (M, d), among the ``gallery`` (N, d). A copy fails when its cosine to its source is below
    ``threshold`` or not above the cosine of the source to its nearest other gallery item (an item that already has
    an exact copy in the gallery fails too: the copy cannot beat it). ``merge_share``: see :attr:`CopyCheck.merges`."""
    threshold = check_threshold(threshold)
    items = np.asarray(items, dtype=np.int64)
    if len(items) == 0 or len(gallery) < 2:
        reason = "no items to plant copies of" if len(items) == 0 else "a gallery of one item has no other item"
        return CopyCheck(0, threshold, warn_share, keep_share=keep_share, merge_share=merge_share, skipped=reason)
    c, s = unit_embeddings(copies).astype(np.float64), unit_embeddings(sources).astype(np.float64)
    copy_cos = np.einsum("ij,ij->i", c, s)
    # the two nearest of each source: itself (or an exact copy of it) and the nearest other
    found = top_k(unit_embeddings(sources), unit_embeddings(gallery), 2)
    first_is_self = found.indices[:, 0] == items
    neighbour = np.where(first_is_self, found.similarities[:, 1], found.similarities[:, 0])
    below = copy_cos < threshold
    # a tie within float32 rounding of unit rows (a collapsed model's classmates at cos 1) is no separation
    not_above = copy_cos <= neighbour + TIE_TOLERANCE
    keep = float(min(np.quantile(copy_cos, 1 - keep_share), 1.0))
    return CopyCheck(
        checked=len(items),
        threshold=threshold,
        warn_share=warn_share,
        below_threshold=float(below.mean()),
        not_above_neighbour=float(not_above.mean()),
        failed=float((below | not_above).mean()),
        median_copy_cosine=float(np.median(copy_cos)),
        median_neighbour_cosine=float(np.median(neighbour)),
        keep_share=keep_share,
        keep_threshold=keep,
        neighbours_above_keep=float((neighbour >= keep).mean()),
        neighbours_above_threshold=float((neighbour >= threshold).mean()),
        merge_share=merge_share,
    )


def check_copies(
    model: InferenceModel,
    gallery: Gallery,
    threshold: float,
    sample: int = 200,
    seed: int = 0,
    warn_share: float = 0.1,
    batch_size: int = 256,
    merge_share: float = MERGE_SHARE,
) -> CopyCheck:
    """Plant a near-copy (:data:`CHECK_EDITS`) of up to ``sample`` of the gallery's image files (a seeded sample),
    embed copies and sources with ``model`` and score them (:func:`copy_scores`). A gallery without image files
    (in-memory data, an npz without paths, files moved away) is skipped, with the reason in ``skipped``."""
    threshold = check_threshold(threshold)
    paths = gallery.paths or []
    usable = [i for i, path in enumerate(paths) if is_image_name(Path(path)) and Path(path).is_file()]
    if not usable:
        why = "the gallery has no image files" if not paths else "none of the gallery's image files can be read"
        skipped = f"{why} (the check plants copies of image files)"
        return CopyCheck(0, threshold, warn_share, merge_share=merge_share, skipped=skipped)
    chosen = np.sort(np.random.default_rng(seed).choice(len(usable), min(int(sample), len(usable)), replace=False))
    mean = torch.tensor(model.preprocessing["mean"], dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(model.preprocessing["std"], dtype=torch.float32).view(-1, 1, 1)
    items, prepared = [], []
    for position in chosen:
        item = usable[int(position)]
        try:
            prepared.append(model.loader(paths[item]))
        except DECODE_ERRORS:  # a broken file is the gallery's problem, reported where it is embedded
            continue
        items.append(item)
    if not items:
        skipped = "none of the sampled image files could be decoded"
        return CopyCheck(0, threshold, warn_share, merge_share=merge_share, skipped=skipped)
    sources, copies = [], []
    for start in range(0, len(items), batch_size):
        batch = torch.stack(prepared[start : start + batch_size])
        # the copy is made of the model's input pixels (its size, in [0, 1]), then normalised as the model expects
        pixels = (batch * std + mean).clamp(0, 1)
        planted = (near_duplicates(pixels, items[start : start + batch_size], seed, CHECK_EDITS) - mean) / std
        sources.append(model.embed_tensor(batch))
        copies.append(model.embed_tensor(planted))
    return copy_scores(
        np.concatenate(copies),
        np.concatenate(sources),
        gallery.embeddings,
        np.array(items),
        threshold,
        warn_share,
        merge_share=merge_share,
    )


def check_copy_options(cfg: DictConfig) -> None:
    """``copy_check=`` (true/false), ``copy_check_sample=`` (a whole number ≥ 1), ``copy_check_warn_share=`` and
    ``copy_check_merge_share=`` (shares from 0 to below 1), checked before the model loads."""
    if cfg.get("copy_check", True) not in (True, False):
        raise UserError(f"copy_check={cfg.get('copy_check')!r} must be true or false (the planted-copy check).")
    sample = cfg.get("copy_check_sample", 200)
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise UserError(
            f"copy_check_sample={sample!r} must be a whole number ≥ 1 (the gallery images that get a planted copy); "
            f"e.g. copy_check_sample=200, or copy_check=false to skip the check."
        )
    share = cfg.get("copy_check_warn_share", 0.1)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share < 1:
        raise UserError(
            f"copy_check_warn_share={share!r} must be a share from 0 to below 1 (warn when more of the planted "
            f"copies fail); e.g. copy_check_warn_share=0.1."
        )
    merge = cfg.get("copy_check_merge_share", MERGE_SHARE)
    if isinstance(merge, bool) or not isinstance(merge, int | float) or not 0 <= merge < 1:
        raise UserError(
            f"copy_check_merge_share={merge!r} must be a share from 0 to below 1 (warn when more of the sampled "
            f"items have another item at cos ≥ threshold); e.g. copy_check_merge_share={MERGE_SHARE}."
        )


def gallery_copy_check(model: InferenceModel, gallery: Gallery, threshold: float, cfg: DictConfig) -> CopyCheck:
    """The command's check, as ``cfg`` says (``copy_check``, ``copy_check_sample``, ``copy_check_warn_share``,
    ``copy_check_merge_share``, ``seed``): run on the gallery, its warning logged as one line; ``skipped`` says why
    when it did not run."""
    check_copy_options(cfg)
    warn_share = float(cfg.get("copy_check_warn_share", 0.1))
    merge_share = float(cfg.get("copy_check_merge_share", MERGE_SHARE))
    if not cfg.get("copy_check", True):
        return CopyCheck(0, check_threshold(threshold), warn_share, merge_share=merge_share, skipped="copy_check=false")
    sample, seed = int(cfg.get("copy_check_sample", 200)), int(cfg.get("seed", 0))
    result = check_copies(
        model, gallery, threshold, sample=sample, seed=seed, warn_share=warn_share, merge_share=merge_share
    )
    line = result.warning()
    if line is not None:
        log.warning(line)
    elif result.skipped:
        log.info("copy check skipped: %s", result.skipped)
    return result
