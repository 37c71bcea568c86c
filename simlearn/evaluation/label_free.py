"""Metrics that need no label: whether a model tells an image's near-duplicate copy from the other images, and
whether its embeddings spread out or collapsed. Reported at test for every run, labelled or not
(``test/copy/recall@1``, ``test/copy/mean_rank``, ``test/alignment``, ``test/uniformity``, ``test/effective_rank``,
``test/mean_cosine``), so that an unlabelled run says whether it worked.

* **copy detection**: each test image is a query against the other test images plus its own copy
  (:mod:`simlearn.data.copies`); ``copy/recall@1`` is the share of queries whose copy is at least as similar as
  their nearest other test image (found by the one exact search, :func:`~simlearn.retrieval.exact.top_k`: a
  tie goes to the copy), ``copy/mean_rank`` the mean place of the copy (1 is best): 1 + the number of other test
  images strictly more similar than the copy. A split of more than :data:`MAX_COPY_QUERIES` items has about that many
  queries (:func:`copy_queries`, the same items in every run), against all its items;
* **alignment** (Wang & Isola 2020, α = 2): the mean squared distance between the unit embeddings of an image and of
  its copy (0 is best; 4 is opposite);
* **uniformity** (Wang & Isola 2020, t = 2): log of the mean of ``exp(-2 |u - v|²)`` over pairs of distinct test
  items (−4 is spread out over the sphere; 0 is all embeddings equal);
* **effective rank** (Roy & Vetterli 2007): ``exp`` of the entropy of the singular values of the unit embeddings
  normalised to sum to 1, not centred (as RankMe, Garrido et al. 2023): 1 when every embedding is the same direction,
  the dimension when they fill it evenly;
* **mean cosine**: the mean cosine of pairs of distinct test items.

:func:`collapse_warning` turns the last two into the one-line warning of a collapsed model.
"""

from __future__ import annotations

import numpy as np
import torch

from simlearn.retrieval.exact import top_k

__all__ = [
    "COLLAPSE_EFFECTIVE_RANK",
    "COLLAPSE_MEAN_COSINE",
    "MAX_COPY_QUERIES",
    "collapse_warning",
    "copy_queries",
    "label_free_metrics",
]

#: About how many items of a split are copy-detection queries (each needs its copy made and embedded); the gallery
#: is always every item of the split. 1,000 queries give recall@1 to about ±0.016 (one standard error at 0.5).
MAX_COPY_QUERIES = 1000

#: The collapse rule: embeddings whose effective rank is below this, or whose mean pairwise cosine is above
#: :data:`COLLAPSE_MEAN_COSINE`, have collapsed. Measured on the digits' test split (450 items, small_cnn; the 64-d
#: projection head unless said), effective rank / mean cosine: loss=softmax after 3 epochs 17.78 / 0.626; loss=
#: reconstruction data.labels=none after 2 epochs 11.71 / 0.784; the untrained network (train=false) 9.24 / 0.986;
#: an encoder forced to a near-constant output (tests/test_label_free.py, head=identity, 1 epoch) 1.02 / 0.9999999.
#: The bounds sit 4.6× below the lowest healthy rank and 14× closer to 1 than the highest healthy cosine
#: (1 − 0.986 = 0.014 against 0.001), and far from the collapsed values either way.
COLLAPSE_EFFECTIVE_RANK = 2.0
COLLAPSE_MEAN_COSINE = 0.999
#: pairs of items per block of the pairwise sums (bounded memory for any test split)
_BLOCK_PAIRS = 2**22


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _pairwise(unit: torch.Tensor) -> tuple[float, float]:
    """(mean cosine, uniformity) over the pairs of distinct rows of ``unit``, in blocks of rows."""
    n = len(unit)
    rows = max(1, _BLOCK_PAIRS // max(1, n))
    cos_sum, gauss_sum = 0.0, 0.0
    for start in range(0, n, rows):
        cos = unit[start : start + rows] @ unit.T
        own = torch.arange(start, min(start + rows, n))
        cos[own - start, own] = 0.0
        cos_sum += float(cos.sum())
        # |u - v|² = 2 - 2 cos for unit rows; the diagonal (a pair of an item with itself) is left out
        gauss = torch.exp(-2.0 * (2.0 - 2.0 * cos))
        gauss[own - start, own] = 0.0
        gauss_sum += float(gauss.sum())
    pairs = n * (n - 1)
    return cos_sum / pairs, float(np.log(max(gauss_sum / pairs, 1e-300)))


def copy_queries(index: torch.Tensor, share: float) -> torch.Tensor:
    """Which of the items ``index`` (their item numbers) are copy-detection queries when a ``share`` of a split is:
    a fixed pseudo-random draw per item number (the same items in every batch order, process and run)."""
    if share >= 1:
        return torch.ones(len(index), dtype=torch.bool, device=index.device)
    # Knuth's multiplicative hash of the item number, as a number in [0, 1)
    draw = ((index.long() * 2654435761) % 2**32).double() / 2**32
    return draw < share


def effective_rank(embeddings: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank of the unit rows of ``embeddings`` (not centred): exp(entropy of s / Σs)."""
    values = torch.linalg.svdvals(_unit(embeddings))
    p = values / values.sum().clamp_min(1e-300)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def label_free_metrics(
    embeddings: torch.Tensor, copies: torch.Tensor | None = None, backend: str = "auto"
) -> dict[str, float]:
    """The label-free metrics of the module docstring for the embeddings of a split (N × d) and, when given, the
    embeddings of their copies (N × d, row i the copy of item i; rows of NaN for the items that are no query): the
    copy metrics and alignment need the copies, and are those of the queries."""
    embeddings = torch.as_tensor(embeddings).detach().cpu()
    n = len(embeddings)
    if n < 2:
        return {}
    unit = _unit(embeddings)
    mean_cos, uniformity = _pairwise(unit)
    out = {"uniformity": uniformity, "effective_rank": effective_rank(embeddings), "mean_cosine": mean_cos}
    if copies is None:
        return out
    copies = torch.as_tensor(copies).detach().cpu()
    queries = torch.nonzero(torch.isfinite(copies).all(dim=1)).flatten()
    if not len(queries):
        return out
    query_unit, copy_unit = unit[queries], _unit(copies[queries])
    out["alignment"] = float(((query_unit - copy_unit) ** 2).sum(dim=1).mean())
    copy_cos = (query_unit * copy_unit).sum(dim=1)
    # the copy comes first when no other test item is more similar: the nearest other item by the one exact search
    # (the query's own item left out), against the copy's own cosine; on a tie the copy wins, as the lowest row would
    found = top_k(embeddings[queries].float(), embeddings.float(), k=2, backend=backend)
    own = found.indices[:, 0] == queries.numpy()
    nearest = np.where(own, found.similarities[:, 1], found.similarities[:, 0])
    out["copy/recall@1"] = float((copy_cos.numpy() >= nearest).mean())
    rows = max(1, _BLOCK_PAIRS // n)
    ranks = []
    for start in range(0, len(queries), rows):
        chunk = queries[start : start + rows]
        cos = unit[chunk] @ unit.T
        cos[torch.arange(len(chunk)), chunk] = -np.inf  # the query's own item
        ranks.append(1 + (cos > copy_cos[start : start + rows, None]).sum(dim=1))
    out["copy/mean_rank"] = float(torch.cat(ranks).double().mean())
    return out


def collapse_warning(metrics: dict[str, float], prefix: str = "test/") -> str | None:
    """The one line that says the embeddings collapsed (:data:`COLLAPSE_EFFECTIVE_RANK`,
    :data:`COLLAPSE_MEAN_COSINE`), or None when they did not (or the metrics are absent)."""
    rank, cos = metrics.get(f"{prefix}effective_rank"), metrics.get(f"{prefix}mean_cosine")
    if rank is None or cos is None:
        return None
    if rank >= COLLAPSE_EFFECTIVE_RANK and cos <= COLLAPSE_MEAN_COSINE:
        return None
    return (
        f"the embeddings have collapsed: effective rank {rank:.2f} (collapsed below {COLLAPSE_EFFECTIVE_RANK:g}), "
        f"mean cosine between test items {cos:.6f} (collapsed above {COLLAPSE_MEAN_COSINE:g}): the model maps "
        f"different images to nearly one embedding, so its rankings rest on tiny differences that float32 indexes, "
        f"quantisation and noise wipe out. Lower optimizer.lr, check that the loss has negatives or a variance "
        f"term, or train longer."
    )
