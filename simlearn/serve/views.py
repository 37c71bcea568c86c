"""The catalogue views of the service: the gallery's organisation (clusters, near-duplicate groups) and its map, each
computed once per gallery, on the first request that needs it.

The organisation is :func:`simlearn.organise.command.organise_gallery`'s, the one ``simlearn-organise`` writes, with
the options of the serve config's ``organise:`` block; the map is :mod:`simlearn.organise.projection`'s (t-SNE of at
most ``map.max_points`` items, a seeded sample of larger galleries, or PCA). Both are cached beside the gallery's
embedding cache when it has one (an npz keyed by the embeddings, the labels and the options: a stale one is computed
again), else kept in memory only.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from simlearn.errors import UserError
from simlearn.organise.clusters import Clusters, k_candidates
from simlearn.organise.command import Organised, check_options, organise_gallery
from simlearn.organise.duplicates import DuplicateGroups
from simlearn.organise.outliers import Uniqueness
from simlearn.organise.projection import TSNE_MIN_ITEMS, principal_axes, sample_rows, tsne_points
from simlearn.retrieval.cache import fingerprint, load_fingerprinted, save_fingerprinted
from simlearn.retrieval.gallery import Gallery

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_K", "PROJECTIONS", "GalleryViews", "MapOptions", "organise_options"]

#: Bumped when what the cache files hold changes, so that old ones are computed again rather than misread.
VIEWS_CACHE_VERSION = 1
#: k-means clusters when ``organise.k`` is null: this many, or one per item on a smaller gallery
DEFAULT_K = 10
PROJECTIONS = ("tsne", "pca")
#: the organise options the service passes on (those of simlearn-organise that change what is found)
ORGANISE_KEYS = (
    "method",
    "k",
    "min_cluster_size",
    "kmeans_restarts",
    "threshold",
    "max_neighbours",
    "exact_limit",
    "faiss_index",
    "faiss_params",
    "uniqueness_k",
)


@dataclass(frozen=True)
class MapOptions:
    """How the map is drawn: ``projection`` (``tsne``: neighbour-preserving, of at most ``max_points`` items, a seeded
    sample of larger galleries; ``pca``: the first two principal components) and t-SNE's ``max_iter``, which with
    ``max_points`` bounds its time."""

    projection: str = "tsne"
    max_points: int = 2000
    max_iter: int = 500
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> MapOptions:
        """The ``map:`` block of the serve config, checked: one line for a bad value."""
        given = dict(cfg or {})
        unknown = sorted(set(given) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(
                f"map.{unknown[0]} is not a map option; the options are {', '.join(cls.__dataclass_fields__)}."
            )
        projection = given.get("projection") or cls.projection
        if projection not in PROJECTIONS:
            raise UserError(
                f"map.projection={projection!r} is not one of {', '.join(PROJECTIONS)}; e.g. map.projection=tsne "
                f"(neighbours stay together) or map.projection=pca (linear, fast on any size)."
            )
        numbers = {}
        for name in ("max_points", "max_iter", "seed"):
            value = given.get(name, getattr(cls, name))
            least = 0 if name == "seed" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                example = getattr(cls, name)
                raise UserError(f"map.{name}={value!r} must be a whole number ≥ {least}; e.g. map.{name}={example}.")
            numbers[name] = value
        return cls(projection=str(projection), **numbers)


def organise_options(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``organise:`` block of the serve config as simlearn-organise's options, checked as that command checks
    them (one line each; ``k: null`` is checked once the gallery's size is known)."""
    # plain values (a k=[5,30] range is a ListConfig): they key the cache file
    given = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg or {})
    unknown = sorted(set(given) - set(ORGANISE_KEYS))
    if unknown:
        raise UserError(f"organise.{unknown[0]} is not an organise option; the options are {', '.join(ORGANISE_KEYS)}.")
    checked = dict(given)
    if checked.get("k") is None:
        checked["k"] = 1  # stands for min(DEFAULT_K, items), an integer whatever the gallery
    try:
        check_options(OmegaConf.create(checked))
    except UserError as error:  # the command's line, with each key as the serve config spells it (organise.KEY)
        keys = "|".join(sorted(ORGANISE_KEYS, key=len, reverse=True))
        raise UserError(re.sub(rf"(?<![\w.])({keys})=", r"organise.\1=", str(error))) from error
    return given


def _resolved(options: Mapping[str, Any], n: int) -> DictConfig:
    resolved = dict(options)
    if resolved.get("k") is None:
        resolved["k"] = max(1, min(DEFAULT_K, n))
    return OmegaConf.create(resolved)


class GalleryViews:
    """The organisation and the map of one gallery, each computed at most once (a lock per view: two requests at
    the same time wait for one computation) and cached in ``cache_dir`` files beside the gallery's own cache.

    ``cache``: where the gallery keeps what is made from its embeddings (its ``index_path``'s folder); None: memory
    only."""

    def __init__(
        self,
        gallery: Gallery,
        organise: Mapping[str, Any] | None = None,
        map_options: MapOptions | None = None,
        cache: Path | None = None,
    ) -> None:
        self.gallery = gallery
        self.options = organise_options(organise)
        self.map_options = map_options or MapOptions()
        self.cache = cache
        self._organise_lock = threading.Lock()
        self._map_lock = threading.Lock()
        self._organised: Organised | None = None
        self._map: dict[str, Any] | None = None

    def check_size(self) -> None:
        """A ``k`` given in the config larger than the gallery, refused at the start (one line) rather than on the
        first request of a view."""
        k, n = self.options.get("k"), len(self.gallery.embeddings)
        if self.options.get("method", "kmeans") != "kmeans" or k is None:
            return
        if isinstance(k, int) and k > n:
            raise UserError(f"organise.k={k} clusters is more than the {n} items of the gallery; give k from 1 to {n}.")
        try:
            k_candidates(k, n)  # a range: its high end below the items
        except UserError as error:
            raise UserError(f"organise: {error}") from error

    def _cache_file(self, what: str) -> Path | None:
        if self.cache is None:
            return None
        return self.cache.with_name(f"{self.cache.stem}.{what}.npz")

    def _labels_key(self) -> str:
        return json.dumps(self.gallery.labels) if self.gallery.labels is not None else ""

    # -- the organisation --------------------------------------------------------------------------------------------
    def organised(self) -> Organised:
        """The gallery's clusters, duplicate groups and uniqueness, as simlearn-organise finds them."""
        with self._organise_lock:
            if self._organised is None:
                self._organised = self._organise()
            return self._organised

    def _organise(self) -> Organised:
        n = len(self.gallery.embeddings)
        cfg = _resolved(self.options, n)
        options = json.dumps(OmegaConf.to_container(cfg), sort_keys=True)
        path = self._cache_file("organise")
        key = fingerprint(VIEWS_CACHE_VERSION, "organise", self.gallery.embeddings, self._labels_key(), options)
        if path is not None:
            arrays = load_fingerprinted(path, key, None, "organisation of the gallery")
            if arrays is not None:
                try:
                    found = _organised_from(self.gallery, arrays)
                    log.info("gallery organisation reused from %s", path)
                    return found
                except (KeyError, ValueError) as error:
                    log.warning("organising again: the cached organisation %s cannot be read (%s)", path, error)
        start = time.perf_counter()
        found = organise_gallery(self.gallery, cfg)
        log.info("organised %d items in %.1f s", n, time.perf_counter() - start)
        if path is not None:
            save_fingerprinted(path, key, "organisation of the gallery", **_organised_arrays(found))
        return found

    # -- the map -----------------------------------------------------------------------------------------------------
    def map(self) -> dict[str, Any]:
        """The projection of :func:`gallery_map`, computed (or read from the cache) once."""
        with self._map_lock:
            if self._map is None:
                self._map = self._project()
            return self._map

    def _project(self) -> dict[str, Any]:
        options = self.map_options
        path = self._cache_file("map")
        key = fingerprint(VIEWS_CACHE_VERSION, "map", self.gallery.embeddings, json.dumps(asdict(options)))
        if path is not None:
            arrays = load_fingerprinted(path, key, ("rows", "xy", "projection", "explained"), "map of the gallery")
            if arrays is not None:
                explained = arrays["explained"].tolist()
                return _map_answer(
                    self.gallery, arrays["rows"], arrays["xy"], str(arrays["projection"]), explained or None
                )
        start = time.perf_counter()
        rows, xy, projection, explained = project(self.gallery.embeddings, options)
        log.info("map of %d items (%s) in %.1f s", len(rows), projection, time.perf_counter() - start)
        if path is not None:
            save_fingerprinted(
                path, key, "map of the gallery", rows=rows, xy=xy, projection=np.array(projection),
                explained=np.array(explained or [], dtype=np.float64),
            )  # fmt: skip
        return _map_answer(self.gallery, rows, xy, projection, explained)


def project(embeddings: np.ndarray, options: MapOptions) -> tuple[np.ndarray, np.ndarray, str, list[float] | None]:
    """The rows drawn (all, or a seeded sample of ``options.max_points``), their 2-D coordinates, how they were
    projected (in words) and, for PCA, the shares of the variance of the two axes."""
    n, dim = embeddings.shape
    rows = sample_rows(n, options.max_points, options.seed)
    if dim <= 2:
        xy = np.zeros((len(rows), 2))
        xy[:, :dim] = embeddings[rows]
        return rows, xy, "as is (the embeddings are 2-D)", None
    if options.projection == "tsne" and len(rows) >= TSNE_MIN_ITEMS:
        xy = tsne_points(embeddings[rows], seed=options.seed, max_iter=options.max_iter)
        return rows, xy, "t-SNE (neighbours in the embedding space stay neighbours on the map)", None
    mean, components, explained = principal_axes(embeddings, 2)
    xy = (embeddings[rows].astype(np.float64) - mean) @ components
    return rows, xy, "PCA (the first two principal components of the embeddings)", explained


def _map_answer(
    gallery: Gallery, rows: np.ndarray, xy: np.ndarray, projection: str, explained: list[float] | None
) -> dict[str, Any]:
    classes = sorted(gallery.classes)
    code = {name: c for c, name in enumerate(classes)}
    ids = [int(i) for i in rows.tolist()]
    labels = [code.get(gallery.labels[i], -1) for i in ids] if gallery.labels is not None else None
    return {
        "projection": projection,
        "explained_variance_ratio": explained,
        "total": len(gallery.embeddings),
        "shown": len(ids),
        "ids": ids,
        "x": np.round(xy[:, 0], 6).tolist(),
        "y": np.round(xy[:, 1], 6).tolist(),
        "labels": labels,
        "classes": classes,
    }


# -- the organisation as cache arrays ------------------------------------------------------------------------------
def _organised_arrays(found: Organised) -> dict[str, np.ndarray]:
    clusters, duplicates, unusual = found.clusters, found.duplicates, found.uniqueness
    groups = duplicates.groups
    return {
        "cluster": clusters.cluster,
        "cosine": clusters.cosine,
        "centres": clusters.centres,
        "cluster_method": np.array(clusters.method),
        "metrics": np.array(json.dumps(clusters.metrics)),
        "pairs": duplicates.pairs,
        "pair_cosines": duplicates.pair_cosines,
        "group_items": np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64),
        "group_sizes": np.array([len(g) for g in groups], dtype=np.int64),
        "threshold": np.array(duplicates.threshold),
        "duplicate_method": np.array(duplicates.method),
        "exact": np.array(duplicates.exact),
        "uniqueness": unusual.score,
        "uniqueness_order": unusual.order,
        "uniqueness_k": np.array(unusual.k),
    }


def _organised_from(gallery: Gallery, arrays: Mapping[str, np.ndarray]) -> Organised:
    n = len(gallery.embeddings)
    if len(arrays["cluster"]) != n or int(arrays["group_sizes"].sum()) != len(arrays["group_items"]):
        raise ValueError(f"it holds {len(arrays['cluster'])} items, the gallery {n}")
    clusters = Clusters(
        cluster=arrays["cluster"],
        cosine=arrays["cosine"],
        centres=arrays["centres"],
        method=str(arrays["cluster_method"]),
        metrics=json.loads(str(arrays["metrics"])),
    )
    ends = np.cumsum(arrays["group_sizes"])
    groups = list(np.split(arrays["group_items"], ends[:-1])) if len(ends) else []
    duplicates = DuplicateGroups(
        pairs=arrays["pairs"],
        pair_cosines=arrays["pair_cosines"],
        groups=groups,
        threshold=float(arrays["threshold"]),
        method=str(arrays["duplicate_method"]),
        exact=bool(arrays["exact"]),
    )
    unusual = Uniqueness(score=arrays["uniqueness"], order=arrays["uniqueness_order"], k=int(arrays["uniqueness_k"]))
    return Organised(gallery=gallery, clusters=clusters, duplicates=duplicates, uniqueness=unusual)
