"""Post-processing of a ranking: steps that take each query's ranked gallery items and return a better ranking.

A step is one class with one method, ``process(ranking) -> ranking`` (:class:`PostProcessor`), plus one YAML in
``configs/postprocess/`` that builds it (``_target_`` and its parameters); :func:`postprocessors` turns a list of
those YAML names (``evaluation.postprocess=[aqe,k_reciprocal]``) into the steps, applied in order.

The steps shipped:

* :class:`AlphaQueryExpansion` (αQE, Radenović, Tolias and Chum, TPAMI 2018): each query is replaced by the
  weighted sum of itself (weight 1) and its top ``n`` gallery items, weights ``max(cos, 0) ** alpha``, renormalised,
  then searched again.
* :class:`DatabaseAugmentation` (αDBA, same paper): each gallery item is replaced, once, by the weighted sum of
  itself and its own top ``n`` other gallery items, same weights; the queries are then searched against the
  augmented gallery.
* :class:`KReciprocalReranking` (Zhong, Zheng, Cao and Li, CVPR 2017): each query's top ``top_l`` candidates are
  re-ranked by ``(1 - lambda) * jaccard + lambda * d`` from k-reciprocal neighbour sets, in bounded memory.

**Ranking rule.** After every step the order is total and reproducible: equal scores are ordered by the lower gallery
index, the tie rule of the exact search (:mod:`simlearn.retrieval.exact`); αQE and DBA search again through
that very search (:func:`~simlearn.retrieval.exact.top_k`). In self-search (leave-one-out) query i is gallery
item i and is never its own neighbour, also after the queries or the gallery have changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from scipy import sparse

from simlearn.errors import UserError
from simlearn.retrieval.exact import NeighbourChunk, top_k
from simlearn.retrieval.inputs import SearchData

__all__ = [
    "AlphaQueryExpansion",
    "DatabaseAugmentation",
    "KReciprocalReranking",
    "PostProcessor",
    "Ranking",
    "apply_postprocess",
    "drop_rows",
    "postprocess_names",
    "postprocessed_ranker",
    "postprocessed_top_k",
    "postprocessors",
    "search_ranking",
]

#: (query, candidate) pairs per block of the Jaccard distances: two sparse rows each, a few MB
_PAIR_BLOCK = 2**14
#: items per block of the k-reciprocal sets: items x (k1 + 1) x (k1 / 2 + 1)^2 int64 (about 20 MB at k1 = 20)
_ITEM_BLOCK = 1024


@dataclass(frozen=True)
class Ranking:
    """Each query's ranked gallery items: ``indices`` (num_queries, depth) gallery rows, best first, and
    ``similarities`` their float64 cosines between ``queries`` and ``gallery`` (the vectors this ranking was made
    with: a step that changes them returns the changed ones). ``self_search``: query i is gallery item i
    (leave-one-out), never its own neighbour."""

    queries: np.ndarray
    gallery: np.ndarray
    self_search: bool
    indices: np.ndarray
    similarities: np.ndarray

    @property
    def depth(self) -> int:
        """Ranked places per query."""
        return self.indices.shape[1]

    @property
    def num_candidates(self) -> int:
        """Gallery items each query is ranked against."""
        return len(self.gallery) - int(self.self_search)


@runtime_checkable
class PostProcessor(Protocol):
    """One post-processing step: ``process`` returns a ranking of the same queries, as deep as the one given.

    ``name`` is the step's name in the metrics (``test/<name>/recall@1``); ``depth`` how many places of each
    query's ranking it reads (the ranking it is given is searched at least that deep)."""

    name: str
    depth: int

    def process(self, ranking: Ranking) -> Ranking:
        """The post-processed ranking."""
        ...


def _unit64(x: Any) -> np.ndarray:
    """float64 rows of unit length (a zero row stays zero: cosine 0 with everything, as in the search)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _search(queries: np.ndarray, gallery: np.ndarray, self_search: bool, depth: int, **search: Any):
    """``(indices, cosines)``: each query's ``depth`` best gallery items by the exact search; in self-search query
    i's own item i left out even when ``queries`` is not the gallery any more (searched one deeper, then dropped)."""
    if not self_search:
        found = top_k(queries, gallery, depth, **search)
        return found.indices, found.similarities
    if queries is gallery:
        found = top_k(queries, None, depth, exclude_self=True, **search)
        return found.indices, found.similarities
    found = top_k(queries, gallery, depth + 1, **search)
    indices, similarities = drop_rows(np.arange(len(queries)), found.indices, found.similarities)
    return indices, similarities


def drop_rows(rows: np.ndarray, indices: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """``indices`` (num_queries, m) and the ``values`` beside them with query q's gallery row ``rows[q]`` left out
    (its own item), one place fewer, the others in their order; a query whose row is not among them (an
    approximate search missed it, or ``rows[q]`` is -1) loses its last place instead, so that every query keeps
    m - 1."""
    keep = indices != np.asarray(rows)[:, None]
    keep[keep.all(axis=1), -1] = False
    width = indices.shape[1] - 1
    return tuple(array[keep].reshape(len(indices), width) for array in (indices, *values))


def search_ranking(
    queries: Any, gallery: Any = None, depth: int = 10, chunk_size: int | None = None, backend: str = "auto"
) -> Ranking:
    """The plain ranking of the exact search (:func:`~simlearn.retrieval.exact.top_k`): ``gallery`` None
    searches the queries against themselves, leave-one-out. ``depth`` is capped at the candidates per query."""
    self_search = gallery is None
    queries = np.asarray(queries)
    gallery = queries if self_search else np.asarray(gallery)
    depth = max(1, min(int(depth), len(gallery) - int(self_search)))
    indices, cos = _search(queries, gallery, self_search, depth, chunk_size=chunk_size, backend=backend)
    return Ranking(queries, gallery, self_search, indices, cos)


def _weighted_means(
    units: np.ndarray, gallery: np.ndarray, neighbours: np.ndarray, cos: np.ndarray, alpha: float
) -> np.ndarray:
    """Each unit row plus the gallery rows of its neighbours weighted ``max(cos, 0) ** alpha`` (its own weight 1),
    renormalised (negative cosines get weight 0: a fractional power of them is undefined)."""
    if not neighbours.size:
        return units
    weights = np.clip(cos, 0.0, None) ** alpha
    return _unit64(units + np.einsum("qn,qnd->qd", weights, gallery[neighbours]))


def _check_int(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise UserError(f"{name} must be an integer ≥ {least}, got {value!r}; e.g. {name}={max(least, 5)}.")
    return int(value)


def _check_number(name: str, value: Any, low: float, high: float | None = None) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < low
        or (high is not None and value > high)
    ):
        where = f"between {low} and {high}" if high is not None else f"≥ {low}"
        raise UserError(f"{name} must be a number {where}, got {value!r}.")
    return float(value)


class _Step:
    """What the steps share: the search settings of their searches again (``chunk_size``, ``backend``)."""

    name = "step"
    depth = 0

    def __init__(self, chunk_size: int | None = None, backend: str = "auto") -> None:
        self.chunk_size = chunk_size
        self.backend = backend

    def _search(self, queries: np.ndarray, gallery: np.ndarray, ranking: Ranking) -> Ranking:
        indices, cos = _search(
            queries, gallery, ranking.self_search, ranking.depth, chunk_size=self.chunk_size, backend=self.backend
        )
        return Ranking(queries, gallery, ranking.self_search, indices, cos)

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({values})"


class AlphaQueryExpansion(_Step):
    """αQE: each query becomes ``q + sum_i max(cos_i, 0)**alpha g_i`` over its top ``n`` gallery items (unit rows,
    the query's own weight 1), renormalised, and is searched again against the same gallery."""

    name = "aqe"

    def __init__(self, n: int = 5, alpha: float = 3.0, chunk_size: int | None = None, backend: str = "auto") -> None:
        super().__init__(chunk_size, backend)
        self.n = _check_int("postprocess aqe n", n, 0)
        self.alpha = _check_number("postprocess aqe alpha", alpha, 0.0)
        self.depth = self.n

    def process(self, ranking: Ranking) -> Ranking:
        n = min(self.n, ranking.depth)
        gallery = _unit64(ranking.gallery)
        queries = gallery if ranking.self_search and ranking.queries is ranking.gallery else _unit64(ranking.queries)
        expanded = _weighted_means(queries, gallery, ranking.indices[:, :n], ranking.similarities[:, :n], self.alpha)
        return self._search(expanded, gallery, ranking)


class DatabaseAugmentation(_Step):
    """αDBA: each gallery item becomes ``g + sum_i max(cos_i, 0)**alpha g_i`` over its own top ``n`` other gallery
    items, renormalised, computed once; the queries (unchanged) are then searched against the augmented gallery.

    Computed once per gallery: the augmented gallery of the last gallery array seen is kept (with that array, so
    its identity is a safe key), so a service answering many queries against one gallery augments it once, not at
    every query (a gallery changed in place is not noticed: give a new array)."""

    name = "dba"

    def __init__(self, n: int = 5, alpha: float = 3.0, chunk_size: int | None = None, backend: str = "auto") -> None:
        super().__init__(chunk_size, backend)
        self.n = _check_int("postprocess dba n", n, 0)
        self.alpha = _check_number("postprocess dba alpha", alpha, 0.0)
        self._augmented: tuple[np.ndarray, np.ndarray] | None = None  # (the gallery given, its augmentation)

    def augment(self, gallery: np.ndarray) -> np.ndarray:
        """The augmented unit rows of ``gallery`` (from the cache when it is the gallery of the last call)."""
        if self._augmented is not None and self._augmented[0] is gallery:
            return self._augmented[1]
        unit = _unit64(gallery)
        n = min(self.n, len(unit) - 1)
        if n > 0:
            own, cos = _search(unit, unit, True, n, chunk_size=self.chunk_size, backend=self.backend)
            augmented = _weighted_means(unit, unit, own, cos, self.alpha)
        else:
            augmented = unit
        self._augmented = (gallery, augmented)
        return augmented

    def process(self, ranking: Ranking) -> Ranking:
        augmented = self.augment(ranking.gallery)
        queries = _unit64(ranking.queries)
        return self._search(queries, augmented, ranking)


class KReciprocalReranking(_Step):
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017), each query's top ``top_l`` candidates re-ranked by
    ``(1 - lambda_value) * jaccard + lambda_value * d``; the places after ``top_l`` keep their order.

    As in the reference code, the sets are built over all items, queries and gallery together: item i's ranking
    starts with itself, then the other items by the exact rule; R(i, k) = the items j among i's first k + 1 with i
    among j's first k + 1; i's set R(i, k1) is expanded by each R(j, round(k1 / 2)) of its members that shares more
    than 2/3 of its items with it; V_i holds ``exp(-d)`` over the expanded set, summing to 1, then the mean of V over
    i's first ``k2`` places (local query expansion); ``jaccard = 1 - m / (2 - m)`` with m = sum min(V_q, V_g).

    One difference from the reference, for bounded memory: ``d = (1 - cos) / 2``, the squared distance of the unit
    vectors over its largest possible value 4, where the reference divides by each column's observed maximum (a pass
    over all pairs). Memory: the items' k1-nearest lists and the sparse V (a few dozen entries per item), and blocks
    of (query, candidate) pairs; never a matrix of all pairs."""

    name = "k_reciprocal"

    def __init__(
        self,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        top_l: int = 100,
        chunk_size: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(chunk_size, backend)
        self.k1 = _check_int("postprocess k_reciprocal k1", k1, 1)
        self.k2 = _check_int("postprocess k_reciprocal k2", k2, 1)
        self.lambda_value = _check_number("postprocess k_reciprocal lambda_value", lambda_value, 0.0, 1.0)
        self.top_l = _check_int("postprocess k_reciprocal top_l", top_l, 1)
        self.depth = self.top_l

    def process(self, ranking: Ranking) -> Ranking:
        gallery = _unit64(ranking.gallery)
        shared = ranking.self_search and ranking.queries is ranking.gallery
        queries = gallery if shared else _unit64(ranking.queries)
        # all items: the gallery alone when the queries are the gallery (query i is item i), else the queries then
        # the gallery (as in the reference code; a changed query in self-search is a new item beside its old one)
        items = gallery if shared else np.concatenate([queries, gallery])
        offset = 0 if shared else len(queries)
        k1 = min(self.k1, len(items) - 1)
        others, _ = _search(items, items, True, k1, chunk_size=self.chunk_size, backend=self.backend)
        nearest = np.concatenate([np.arange(len(items))[:, None], others], axis=1)  # each item first in its own
        v = _encodings(items, nearest, k1)
        k2 = min(self.k2, nearest.shape[1])
        if k2 > 1:
            rows = np.repeat(np.arange(len(items)), k2)
            mean = sparse.csr_matrix(
                (np.full(rows.size, 1.0 / k2), (rows, nearest[:, :k2].ravel())), shape=(len(items),) * 2
            )
            v = (mean @ v).tocsr()
        top = min(self.top_l, ranking.depth)
        candidates = ranking.indices[:, :top]
        pair_q = np.repeat(np.arange(len(queries)), top)  # a query's item: its row of all items
        pair_g = candidates.ravel() + offset
        jaccard = np.empty(pair_q.size)
        for start in range(0, pair_q.size, _PAIR_BLOCK):
            stop = min(start + _PAIR_BLOCK, pair_q.size)
            common = v[pair_q[start:stop]].minimum(v[pair_g[start:stop]]).sum(axis=1).A1
            jaccard[start:stop] = 1.0 - common / (2.0 - common)
        cos = ranking.similarities[:, :top]  # the cosines of the ranking's own vectors
        dist = (1.0 - self.lambda_value) * jaccard.reshape(-1, top) + self.lambda_value * (1.0 - cos) / 2.0
        order = np.lexsort((candidates, dist), axis=1) if dist.size else np.zeros_like(candidates)
        indices = ranking.indices.copy()
        similarities = ranking.similarities.copy()
        indices[:, :top] = np.take_along_axis(candidates, order, axis=1)
        similarities[:, :top] = np.take_along_axis(ranking.similarities[:, :top], order, axis=1)
        return dataclasses.replace(ranking, indices=indices, similarities=similarities)


def _encodings(items: np.ndarray, nearest: np.ndarray, k1: int) -> sparse.csr_matrix:
    """The sparse V of k-reciprocal re-ranking: row i holds ``exp(-d(i, j))`` over i's expanded k-reciprocal set,
    normalised to sum 1 (see :class:`KReciprocalReranking`); ``nearest`` (items, k1 + 1): each item's ranking,
    itself first."""
    half = int(round(k1 / 2))
    n = len(items)
    rows, cols, vals = [], [], []
    for start in range(0, n, _ITEM_BLOCK):
        stop = min(start + _ITEM_BLOCK, n)
        ids = np.arange(start, stop)
        forward = nearest[ids]  # (b, k1 + 1)
        reciprocal = (nearest[forward] == ids[:, None, None]).any(axis=2)  # i among j's first k1 + 1
        # each member j's own R(j, half): j's first half + 1 with j among their first half + 1
        cand = nearest[:, : half + 1][forward]  # (b, k1 + 1, half + 1)
        cand_ok = (nearest[:, : half + 1][cand] == forward[:, :, None, None]).any(axis=3)
        # how many of R(j, half) lie in R(i, k1)
        in_set = (cand[:, :, :, None] == np.where(reciprocal, forward, -1)[:, None, None, :]).any(axis=3) & cand_ok
        accepted = reciprocal & (in_set.sum(axis=2) > 2.0 / 3.0 * cand_ok.sum(axis=2))
        members = np.concatenate(
            [
                np.where(reciprocal, forward, -1),
                np.where(accepted[:, :, None] & cand_ok, cand, -1).reshape(len(ids), -1),
            ],
            axis=1,
        )
        members.sort(axis=1)
        fresh = np.ones_like(members, dtype=bool)
        fresh[:, 1:] = members[:, 1:] != members[:, :-1]
        fresh &= members >= 0
        row, col = np.nonzero(fresh)
        j = members[row, col]
        i = ids[row]
        d = (1.0 - np.einsum("pd,pd->p", items[i], items[j])) / 2.0
        w = np.exp(-d)
        total = np.bincount(row, weights=w, minlength=len(ids))
        rows.append(i)
        cols.append(j)
        vals.append(w / total[row])
    return sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n), dtype=np.float64
    )


def apply_postprocess(ranking: Ranking, steps: Sequence[PostProcessor]) -> Ranking:
    """``ranking`` through each step in order."""
    for step in steps:
        ranking = step.process(ranking)
    return ranking


def postprocess_names() -> list[str]:
    """The steps ``postprocess`` takes by name: the YAML files of ``configs/postprocess/``."""
    from simlearn.config import config_dir

    return sorted(path.stem for path in (config_dir() / "postprocess").glob("*.yaml"))


def postprocessors(
    steps: Sequence[str | PostProcessor] | Mapping[str, Any] | None, key: str = "evaluation.postprocess", **search: Any
) -> list[PostProcessor]:
    """The steps of a ``postprocess`` list: each entry a step's name (its YAML in ``configs/postprocess/``, built
    with ``search``'s ``chunk_size`` / ``backend`` unless the YAML sets them) or a step already built. An unknown
    name is a :class:`UserError` listing the valid ones; ``key`` is the option the message names. A mapping of
    name → step config is what Hydra composes for ``postprocess=[aqe,dba]`` of the search command and the service
    (the config group ``postprocess``, each YAML under its own name), built in its order."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from simlearn.config import config_dir

    if steps is None:
        return []
    if isinstance(steps, str):
        steps = [steps]
    if isinstance(steps, Mapping) or OmegaConf.is_dict(steps):
        # simlearn-search / simlearn-serve compose postprocess=[…] as the config group: name → its YAML, in order
        steps = [instantiate(node, **{k: v for k, v in search.items() if k not in node}) for node in steps.values()]
    built = []
    for step in steps:
        if isinstance(step, str):
            path = config_dir() / "postprocess" / f"{step}.yaml"
            if not path.is_file():
                raise UserError(
                    f"postprocess step {step!r} does not exist; valid: {postprocess_names()} (one YAML each in "
                    f"configs/postprocess/), e.g. {key}=[aqe]."
                )
            cfg = OmegaConf.load(path)
            step = instantiate(cfg, **{k: v for k, v in search.items() if k not in cfg})
        if not isinstance(step, PostProcessor):
            raise UserError(
                f"a postprocess entry must be a step name, one of {postprocess_names()}, got {step!r}; "
                f"e.g. {key}=[aqe,k_reciprocal]."
            )
        built.append(step)
    return built


def _numpy(t: torch.Tensor) -> np.ndarray:
    """The caller's values as numpy on the CPU (a dtype numpy lacks, e.g. bfloat16, in float64)."""
    t = t.detach().cpu()
    return t.numpy() if t.dtype in (torch.float32, torch.float64) else t.double().numpy()


def postprocessed_ranker(
    steps: Sequence[PostProcessor], chunk_size: int | None = None, backend: str = "auto"
) -> Callable[[SearchData, torch.Tensor], Iterator[NeighbourChunk]]:
    """A ranker for :func:`simlearn.evaluation.retrieval.retrieval_metrics` (``rank=``): the exact search's ranking,
    as deep as the metrics and the steps need, through ``steps``; yielded in chunks of queries like the search's."""

    def rank(data: SearchData, needed: torch.Tensor) -> Iterator[NeighbourChunk]:
        depth = max([int(needed.max()) if len(needed) else 1, *(int(getattr(s, "depth", 0)) for s in steps)])
        queries = _numpy(data.raw_queries)
        ranking = search_ranking(
            queries, None if data.self_search else _numpy(data.raw_gallery), depth, chunk_size, backend
        )
        ranking = apply_postprocess(ranking, steps)
        step = chunk_size or 4096
        for start in range(0, len(queries), step):
            stop = min(start + step, len(queries))
            indices = torch.from_numpy(np.ascontiguousarray(ranking.indices[start:stop])).to(data.device)
            yield NeighbourChunk(start, stop, indices, None, data)

    return rank


def postprocessed_top_k(
    queries: Any, gallery: Any, k: int, steps: Sequence[PostProcessor], exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's top k gallery items after ``steps``, for a search of a gallery (``simlearn-search``, the
    service): ``(cosines, indices)``, (num_queries, k), in the post-processed order, the cosines those of the query
    itself with each item (what a person reads as "how similar"; the order is the steps'). ``exclude``: per query a
    gallery row left out (its own item, for an item's neighbours), or -1. Searched exactly in memory, as deep as the
    steps need."""
    queries = np.asarray(queries)
    gallery = np.asarray(gallery)
    extra = int(exclude is not None)
    depth = max([k + extra, *(int(getattr(step, "depth", 0)) for step in steps)])
    ranking = apply_postprocess(search_ranking(queries, gallery, depth), steps)
    indices = ranking.indices
    if exclude is not None:  # drop each query's own row, keeping the order of the rest
        (indices,) = drop_rows(exclude, indices)
    indices = indices[:, :k]
    cosines = np.einsum("qd,qkd->qk", _unit64(queries), _unit64(gallery)[indices])
    return cosines, indices
