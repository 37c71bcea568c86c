"""The inputs of simlearn's exact search, checked once: embeddings (finite, real, 2-D, one dimension) as
unit float32 rows searched and the caller's rows kept for float64 re-scoring (:class:`SearchData`), a gallery
prepared once for many searches (:class:`PreparedGallery`), and labels for the metrics (:class:`QueryGallery`,
classes as dense codes). The search itself: :mod:`simlearn.retrieval.exact`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from simlearn.errors import UserError
from simlearn.retrieval.vectors import row_norms, unit_rows

__all__ = [
    "UNIT_TOLERANCE",
    "PreparedGallery",
    "QueryGallery",
    "SearchData",
    "as_tensor",
    "prepare_gallery",
    "query_gallery",
    "search_data",
]

#: rows whose norms are all within this of 1 are searched as they are (no normalised copy, 2 GB at 1M x 512): a
#: float32 row normalised by any library deviates by at most 3e-7 (measured up to d=2048); the deviation enters
#: the error bound (score_error_bound), so it costs a little more re-scoring, never a wrong order
UNIT_TOLERANCE = 1e-6
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


# ---------------------------------------------------------------- the searched vectors


def as_tensor(x: Any) -> torch.Tensor:
    """The caller's array as a tensor sharing its memory (numpy through ``from_numpy``), detached."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    array = np.asarray(x)
    if any(stride < 0 for stride in array.strides):  # torch cannot view negative strides (x[::-1])
        array = array.copy()
    return torch.as_tensor(array)


def _as_embeddings(x: Any, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(raw, unit, norms)``: the caller's values (any real dtype, where they are), their unit float32 rows on
    ``device`` (``raw`` itself when it is float32 of unit length on ``device``) and the rows' float64 norms."""
    t = as_tensor(x)
    if t.ndim != 2:
        raise UserError(
            f"{name} must be a 2-D array of shape (num_items, dim), got shape {tuple(t.shape)}; "
            "reshape it (e.g. x.reshape(len(x), -1))."
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise UserError(f"{name} is empty (shape {tuple(t.shape)}); pass at least one item with dim >= 1.")
    if t.is_complex() or not (t.is_floating_point() or t.dtype in _INT_DTYPES):
        raise UserError(f"{name} must hold real numbers, got dtype {t.dtype}; convert it to float32.")
    norms = row_norms(t)
    if not torch.isfinite(norms).all():  # a NaN or inf entry (or a float64 beyond 1e154, whose square overflows)
        bad = int((~torch.isfinite(norms)).sum())
        raise UserError(
            f"{name} contains NaN or inf in {bad} row(s); all values must be finite. "
            "Check the model/training for divergence or drop those items."
        )
    unit = unit_rows(t, torch.float32, tolerance=UNIT_TOLERANCE, norms=norms).to(device)
    return t, unit, norms


@dataclass
class SearchData:
    """Queries and gallery ready to search: unit float32 rows on the search device (embeddings that already had unit
    length share memory with the caller's array: read them, never modify them in place), and the caller's own
    arrays with their float64 norms, read by the float64 re-scoring. ``self_search``: the queries are the gallery
    and a query's own item is never its neighbour (leave-one-out)."""

    queries: torch.Tensor
    gallery: torch.Tensor
    self_search: bool
    raw_queries: torch.Tensor
    raw_gallery: torch.Tensor
    query_norms: torch.Tensor
    gallery_norms: torch.Tensor

    @property
    def num_candidates(self) -> int:
        """Gallery items each query is ranked against."""
        return len(self.gallery) - int(self.self_search)

    @property
    def device(self) -> torch.device:
        return self.queries.device

    def cpu(self) -> SearchData:
        """The unit rows on the CPU (for faiss); the caller's arrays stay where they are."""
        queries = self.queries.cpu()
        gallery = queries if self.gallery is self.queries else self.gallery.cpu()
        return dataclasses.replace(self, queries=queries, gallery=gallery)


def search_data(queries: Any, gallery: Any = None, names: tuple[str, str] = ("queries", "gallery")) -> SearchData:
    """Check and normalise queries and an optional gallery (None: the queries searched against themselves,
    leave-one-out). Runs on the device of ``queries`` if it is a tensor, else on the CPU; every problem with the
    inputs is a :class:`UserError` naming the argument (``names``)."""
    device = queries.device if isinstance(queries, torch.Tensor) else torch.device("cpu")
    return _with_gallery(_as_embeddings(queries, names[0], device), gallery, names, device)


@dataclass(frozen=True)
class PreparedGallery:
    """A gallery checked and scaled to unit rows once (:func:`prepare_gallery`), to be searched many times (a
    service answering one query at a time) without a pass over all of it per search: pass it as the gallery."""

    raw: torch.Tensor
    unit: torch.Tensor
    norms: torch.Tensor

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.raw.shape)


def prepare_gallery(gallery: Any, device: torch.device | str | None = None) -> PreparedGallery:
    """Check ``gallery`` and compute its unit float32 rows (on ``device``, default: where it is, numpy on the CPU)
    and float64 norms once; the caller's array is kept (read, never modified) for the float64 re-scoring."""
    raw = as_tensor(gallery)
    return PreparedGallery(*_as_embeddings(raw, "gallery", torch.device(device) if device else raw.device))


def _with_gallery(
    checked_queries: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    gallery: Any,
    names: tuple[str, str],
    device: torch.device,
) -> SearchData:
    raw_q, q, q_norms = checked_queries
    if gallery is None:
        return SearchData(q, q, True, raw_q, raw_q, q_norms, q_norms)
    if isinstance(gallery, PreparedGallery):
        raw_g, g, g_norms = gallery.raw, gallery.unit.to(device), gallery.norms
    else:
        raw_g, g, g_norms = _as_embeddings(gallery, names[1], device)
    if g.shape[1] != q.shape[1]:
        raise UserError(
            f"{names[1]} have dim {g.shape[1]} but {names[0]} have dim {q.shape[1]}; "
            "queries and gallery must come from the same model."
        )
    return SearchData(q, g, False, raw_q, raw_g, q_norms, g_norms)


def _as_labels(y: Any, name: str, n: int, emb_name: str, device: torch.device) -> torch.Tensor:
    t = as_tensor(y)
    if t.ndim != 1:
        raise UserError(f"{name} must be a 1-D array of integer class ids, got shape {tuple(t.shape)}.")
    if t.dtype not in _INT_DTYPES:
        raise UserError(
            f"{name} must hold integer class ids, got dtype {t.dtype}; map classes to ints (e.g. .astype(int))."
        )
    if len(t) != n:
        raise UserError(
            f"{name} has {len(t)} entries but {emb_name} has {n} rows; give exactly one label per embedding."
        )
    return t.to(device=device, dtype=torch.int64)


@dataclass
class QueryGallery(SearchData):
    """:class:`SearchData` with labels: class ids ``0 .. num_classes - 1`` shared by queries and gallery (sorted
    like the labels, so the smallest label has id 0) and the number of relevant items of each query."""

    query_classes: torch.Tensor
    gallery_classes: torch.Tensor
    labels: torch.Tensor  # the original label of each class id
    #: R_q of each query: the gallery items of its class, not counting its own item in self-search
    relevant: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        counts = torch.bincount(self.gallery_classes, minlength=len(self.labels))
        self.relevant = counts[self.query_classes] - int(self.self_search)

    def cpu(self) -> QueryGallery:
        query_classes = self.query_classes.cpu()
        same = self.gallery_classes is self.query_classes
        return dataclasses.replace(
            super().cpu(),
            query_classes=query_classes,
            gallery_classes=query_classes if same else self.gallery_classes.cpu(),
            labels=self.labels.cpu(),
        )


def query_gallery(
    embeddings: Any, labels: Any, gallery_embeddings: Any = None, gallery_labels: Any = None
) -> QueryGallery:
    """Check and normalise queries and an optional gallery (both gallery arguments or neither: self-search).

    Computation runs on the device of ``embeddings`` if it is a tensor, else on the CPU. Every problem with the
    inputs is a :class:`UserError` that names the argument and how to fix it.
    """
    self_search = gallery_embeddings is None and gallery_labels is None
    if not self_search and (gallery_embeddings is None or gallery_labels is None):
        missing = "gallery_embeddings" if gallery_embeddings is None else "gallery_labels"
        raise UserError(
            f"{missing} is missing: pass gallery_embeddings and gallery_labels together, "
            "or neither to search the queries against themselves."
        )
    device = embeddings.device if isinstance(embeddings, torch.Tensor) else torch.device("cpu")
    checked = _as_embeddings(embeddings, "embeddings", device)
    q_lab = _as_labels(labels, "labels", len(checked[0]), "embeddings", device)
    data = _with_gallery(checked, gallery_embeddings, ("embeddings", "gallery_embeddings"), device)
    g_lab = q_lab
    if not self_search:
        g_lab = _as_labels(gallery_labels, "gallery_labels", len(data.gallery), "gallery_embeddings", device)
    classes, inverse = torch.unique(torch.cat([q_lab, g_lab]), return_inverse=True)
    query_classes = inverse[: len(data.queries)]
    gallery_classes = query_classes if self_search else inverse[len(data.queries) :]
    return QueryGallery(**vars(data), query_classes=query_classes, gallery_classes=gallery_classes, labels=classes)
