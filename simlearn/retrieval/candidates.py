"""Candidate sources: what a gallery can be searched through besides simlearn's exact in-memory search
(:mod:`simlearn.retrieval.exact`, which re-scores whatever a source returns in float64 and orders it by the
exact rule). A source is anything with the :class:`CandidateSource` interface: a faiss index (:class:`FaissIndex`,
built and saved by :func:`gallery_index`), a LanceDB table (:class:`simlearn.retrieval.vectordb.LanceCandidates`), or
a new one (e.g. binary codes searched by Hamming distance): one class."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from simlearn.errors import UserError
from simlearn.retrieval.cache import atomic_write
from simlearn.retrieval.faiss_lib import faiss_reason, import_faiss
from simlearn.retrieval.inputs import UNIT_TOLERANCE, as_tensor
from simlearn.retrieval.vectors import unit_rows

log = logging.getLogger(__name__)

__all__ = ["CandidateSource", "FaissIndex", "gallery_index"]


@runtime_checkable
class CandidateSource(Protocol):
    """A search of a gallery's unit float32 rows for candidates, which the exact search re-scores and orders.

    ``search(queries, k) -> (scores, rows)``: per query (unit float32 rows) the scores (descending; float32 inner
    products, or within ``score_slack`` of them beyond :func:`~simlearn.retrieval.exact.score_error_bound`) and
    the int64 gallery rows of its k best candidates, -1 where it has fewer. ``exact``: whether the search is
    exhaustive (then the result through it is simlearn's exact one); ``size`` vectors of dimension ``dim``;
    ``library`` names it in messages, ``describe()`` says for people how a search through it went."""

    size: int
    dim: int
    library: str
    exact: bool
    score_slack: float

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self) -> str: ...


@dataclass
class FaissIndex:
    """A faiss inner-product index of a gallery's unit embeddings (a :class:`CandidateSource`), its ``factory``
    string and where it came from (``how``: "reused PATH", "built and saved PATH" or "built in memory")."""

    index: Any
    factory: str
    how: str
    library: str = "faiss"
    score_slack: float = 0.0

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def exact(self) -> bool:
        """Whether it is a flat inner-product index (exhaustive): then the search through it is exact."""
        faiss = import_faiss()
        return isinstance(faiss.downcast_index(self.index), faiss.IndexFlat) and (
            self.index.metric_type == faiss.METRIC_INNER_PRODUCT
        )

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)

    def describe(self) -> str:
        if self.exact:
            return f"exact (faiss {self.factory} index, {self.how}; re-scored in float64)"
        return (
            f"APPROXIMATE (faiss {self.factory} index, {self.how}: its candidates re-scored in float64, but nearer "
            f"items it did not visit can be missing; faiss_index=Flat is exact)"
        )


def _unit_fingerprint(unit: np.ndarray) -> str:
    """What a saved index was built from: a digest of the unit rows' bytes (what its ``.json`` has always held, so
    that indexes saved before stay valid)."""
    digest = hashlib.sha1()
    digest.update(memoryview(np.ascontiguousarray(unit)))
    digest.update(b"\0")
    return digest.hexdigest()


def gallery_index(embeddings: Any, path: str | Path | None = None, factory: str = "Flat") -> FaissIndex:
    """A faiss inner-product index of the unit rows of ``embeddings``: read from ``path`` when it was built from
    these very embeddings with this factory string (a ``<path>.json`` beside it says so), else built, and saved
    there when ``path`` is given (a failure to save is a warning: the index is used from memory).

    ``factory`` is a faiss ``index_factory`` string: ``Flat`` is exact, e.g. ``HNSW32`` approximate; anything else
    faiss does not know is a :class:`UserError`.
    """
    faiss = import_faiss()
    raw = as_tensor(embeddings)
    unit = np.ascontiguousarray(unit_rows(raw, torch.float32, tolerance=UNIT_TOLERANCE).cpu().numpy())
    expected = {"fingerprint": _unit_fingerprint(unit), "factory": factory, "count": len(unit)}
    path = Path(path) if path is not None else None
    meta = path.with_name(path.name + ".json") if path is not None else None
    if path is not None and path.is_file() and meta.is_file():
        try:
            if json.loads(meta.read_text()) == expected:
                index = faiss.read_index(str(path))
                if index.ntotal == len(unit) and index.d == unit.shape[1]:
                    return FaissIndex(index, factory, f"reused {path}")
        except (OSError, RuntimeError, ValueError) as error:
            log.warning("rebuilding the faiss index %s (%s)", path, error)
    try:
        index = faiss.index_factory(unit.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise UserError(
            f"faiss_index={factory!r} is not a faiss index_factory string ({faiss_reason(error)}); e.g. Flat (exact) "
            f"or HNSW32."
        ) from None
    if not index.is_trained:
        try:  # IVF and PQ learn from the items: too few of them for their centroids is faiss's RuntimeError
            index.train(unit)
        except RuntimeError as error:
            raise UserError(
                f"faiss_index={factory!r} cannot be trained on these {len(unit):,} items ({faiss_reason(error)}); "
                f"give an index with fewer centroids (faiss wants about 39 items per IVF list and 256 per PQ code "
                f"book), or one that needs no training: HNSW32 (approximate) or Flat (exact)."
            ) from None
    index.add(unit)
    if path is None:
        return FaissIndex(index, factory, "built in memory")
    try:
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # one per process: two never mix
        faiss.write_index(index, str(partial))
        os.replace(partial, path)
        atomic_write(meta, lambda file: file.write((json.dumps(expected) + "\n").encode()))
    except (OSError, RuntimeError) as error:
        log.warning("could not save the faiss index next to the gallery at %s (%s)", path, error)
        return FaissIndex(index, factory, "built in memory")
    return FaissIndex(index, factory, f"built and saved {path}")
