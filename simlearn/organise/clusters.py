"""Clusters of a collection: spherical k-means through faiss on the unit embeddings (``k`` given, or chosen from a
range by the highest mean silhouette: :func:`choose_k`), or a density clustering that needs no k and leaves noise
unassigned (scikit-learn's HDBSCAN, cluster ``-1``); with each item's cosine to its cluster's centre, and NMI/AMI
against labels when the items have them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from simlearn.errors import UserError
from simlearn.evaluation.clustering import KMEANS_ITERATIONS, KMEANS_SEED
from simlearn.retrieval.faiss_lib import faiss_installed, import_faiss
from simlearn.retrieval.vectors import unit_rows

__all__ = [
    "HDBSCAN_LIMIT",
    "NOISE",
    "SILHOUETTE_SAMPLE",
    "Clusters",
    "choose_k",
    "cluster_embeddings",
    "k_candidates",
    "unit_embeddings",
]

#: the cluster of an item the density clustering leaves unassigned
NOISE = -1
METHODS = ("kmeans", "hdbscan")
#: the most items HDBSCAN is run on: in 128 dimensions its time grows faster than N² (its k-d tree no longer prunes):
#: 5 s at 5,000 items, 19 s at 10,000, 156 s at 20,000 (d = 128, 1,000 clusters; 2-core machine shared with other
#: jobs, README "Organising a catalogue"), so 50,000 would take most of an hour; k-means takes 1M items in minutes
HDBSCAN_LIMIT = 20_000
#: the most items a candidate k's silhouette is computed on (a seeded sample; its cost is the square of the sample)
SILHOUETTE_SAMPLE = 5000
#: rows per block of the centres' and cosines' computation (64k x 128 float64: 64 MB)
_BLOCK_ROWS = 65_536


@dataclass
class Clusters:
    """Each item's ``cluster`` (``NOISE`` for unassigned ones) and ``cosine`` to its cluster's centre (the unit mean
    of its members; NaN for noise), the unit ``centres`` (one row per cluster id), and NMI/AMI against the labels
    (``metrics``, empty without labels; noise counts as one cluster of its own)."""

    cluster: np.ndarray
    cosine: np.ndarray
    centres: np.ndarray
    method: str
    metrics: dict[str, float] = field(default_factory=dict)
    #: how k was chosen from a range (:func:`choose_k`): the criterion and each candidate's score; empty for a k given
    selection: dict[str, object] = field(default_factory=dict)

    def summary(self, labels: Sequence[str | None] | None = None) -> list[dict[str, object]]:
        """One row per cluster, largest first: ``cluster``, ``size``, ``mean_cosine`` to the centre and, with
        labels, ``labels`` (each label inside and its count, most frequent first)."""
        rows = []
        for c in range(len(self.centres)):
            members = np.flatnonzero(self.cluster == c)
            row: dict[str, object] = {
                "cluster": c,
                "size": len(members),
                "mean_cosine": float(self.cosine[members].mean()),
            }
            if labels is not None:
                names, counts = np.unique([str(labels[i]) for i in members], return_counts=True)
                order = np.argsort(-counts, kind="stable")
                row["labels"] = {str(names[i]): int(counts[i]) for i in order}
            rows.append(row)
        return sorted(rows, key=lambda row: -int(row["size"]))


def unit_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """``embeddings`` as unit float32 rows, C order (what faiss and the searches take)."""
    return np.ascontiguousarray(unit_rows(np.asarray(embeddings)), dtype=np.float32)


def _spherical_kmeans(x: np.ndarray, k: int, restarts: int) -> np.ndarray:
    if not faiss_installed():
        from sklearn.cluster import KMeans

        # on unit rows the Euclidean assignment is the cosine one; the centres are normalised again below
        return KMeans(n_clusters=k, n_init=restarts, max_iter=KMEANS_ITERATIONS, random_state=KMEANS_SEED).fit_predict(
            x
        )
    faiss = import_faiss()
    kmeans = faiss.Kmeans(
        x.shape[1], k, niter=KMEANS_ITERATIONS, seed=KMEANS_SEED, spherical=True,
        nredo=restarts, verbose=False,
        min_points_per_centroid=1,
    )  # fmt: skip
    kmeans.train(x)
    _, assigned = kmeans.index.search(x, 1)
    return assigned[:, 0].astype(np.int64)


def cluster_embeddings(
    embeddings: np.ndarray,
    k: int | None = None,
    method: str = "kmeans",
    min_cluster_size: int = 5,
    labels: Sequence[object] | None = None,
    restarts: int = 5,
    hdbscan_limit: int = HDBSCAN_LIMIT,
) -> Clusters:
    """Cluster the items of ``embeddings`` (N, d): ``method="kmeans"`` (spherical, ``k`` clusters, needs
    ``1 ≤ k ≤ N``) or ``"hdbscan"`` (no k; clusters of at least ``min_cluster_size`` items, the rest ``NOISE``).
    ``restarts``: k-means runs from that many seeded starts and keeps the tightest (one start merged two of four
    well-apart classes in a test). Cluster ids are renumbered by size, largest first.
    ``labels``: the items' labels, for NMI/AMI. More than ``hdbscan_limit`` items for HDBSCAN is one line (its time
    grows as N², :data:`HDBSCAN_LIMIT`)."""
    if method not in METHODS:
        raise UserError(f"cluster method {method!r} is not one of {', '.join(METHODS)}; e.g. method=kmeans k=10.")
    if method == "hdbscan" and len(embeddings) > hdbscan_limit:  # before the unit copy of all rows
        raise UserError(
            f"method=hdbscan on {len(embeddings):,} items: it takes at most {hdbscan_limit:,} (its time grows faster "
            f"than the square of the items); use method=kmeans (e.g. k=100), or organise a sample of the gallery."
        )
    x = unit_embeddings(embeddings)
    n = len(x)
    if n == 0:
        raise UserError("there are no items to cluster (the gallery is empty); give a gallery with items.")
    if method == "kmeans":
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
            raise UserError(f"k={k!r} clusters for {n} items: k must be an integer from 1 to {n}; give a smaller k.")
        raw = _spherical_kmeans(x, int(k), max(1, int(restarts)))
    else:
        from sklearn.cluster import HDBSCAN

        if n < 2:
            raise UserError(f"HDBSCAN needs at least 2 items, the gallery has {n}; use method=kmeans k=1.")
        # euclidean on unit rows orders pairs as the cosine does (|a - b|² = 2 - 2 cos)
        raw = HDBSCAN(min_cluster_size=max(2, min(int(min_cluster_size), n)), copy=True).fit_predict(x).astype(np.int64)
    # renumber by size, largest first, so that cluster 0 is the largest whatever the library numbered
    ids, counts = np.unique(raw[raw != NOISE], return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    # a lookup table, not a Python loop over the N items
    lookup = np.full(int(raw.max()) + 2, NOISE, dtype=np.int64)  # the last entry: NOISE (raw -1) maps to itself
    lookup[order] = np.arange(len(order))
    cluster = lookup[raw]
    # in blocks of rows: a float64 copy of all rows (and of their centres) would be four times the embeddings
    blocks = [slice(start, min(start + _BLOCK_ROWS, n)) for start in range(0, n, _BLOCK_ROWS)]
    centres = np.zeros((len(order), x.shape[1]), dtype=np.float32)
    for rows in blocks:
        assigned = cluster[rows] != NOISE
        np.add.at(centres, cluster[rows][assigned], x[rows][assigned])
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    cosine = np.full(n, np.nan)
    for rows in blocks:
        assigned = np.flatnonzero(cluster[rows] != NOISE) + rows.start
        cosine[assigned] = np.einsum(
            "ij,ij->i", x[assigned].astype(np.float64), centres[cluster[assigned]].astype(np.float64)
        )
    metrics: dict[str, float] = {}
    if labels is not None and len(labels) == n:
        truth = np.asarray([str(label) for label in labels])
        metrics = {
            "nmi": float(normalized_mutual_info_score(truth, cluster)),
            "ami": float(adjusted_mutual_info_score(truth, cluster)),
        }
    return Clusters(cluster=cluster, cosine=cosine, centres=centres, method=method, metrics=metrics)


def k_candidates(spec: object, n: int | None = None) -> list[int]:
    """The k a ``k=`` option asks for: an integer (that k), or a range ``[low, high]`` (every k from low to high) or
    ``[low, high, step]``; a range needs 2 ≤ low ≤ high (the silhouette needs two clusters) and, with ``n`` items,
    high < n (and one item more than clusters). Anything else is one line."""
    if isinstance(spec, int | np.integer) and not isinstance(spec, bool):
        if spec < 1:
            raise UserError(f"k={spec!r}: k-means needs a whole number of clusters, at least 1; e.g. k=10.")
        return [int(spec)]
    values = list(spec) if isinstance(spec, Sequence) and not isinstance(spec, str) else None
    if (
        values is None
        or len(values) not in (2, 3)
        or any(isinstance(v, bool) or not isinstance(v, int | np.integer) for v in values)
        or not 2 <= values[0] <= values[1]
        or (len(values) == 3 and values[2] < 1)
    ):
        raise UserError(
            f"k={spec!r}: give a whole number of clusters (k=10) or a range to choose from by the silhouette, "
            f"k=[low,high] or k=[low,high,step] with 2 <= low <= high (e.g. k=[5,30,5])."
        )
    low, high = int(values[0]), int(values[1])
    if n is not None and high >= n:
        raise UserError(
            f"k={spec!r}: a range up to {high} clusters needs more than {high} items, the gallery has {n}; give a "
            f"range with high below {n}."
        )
    return list(range(low, high + 1, int(values[2]) if len(values) == 3 else 1))


def choose_k(
    embeddings: np.ndarray,
    candidates: Sequence[int],
    labels: Sequence[object] | None = None,
    restarts: int = 5,
    sample: int = SILHOUETTE_SAMPLE,
) -> Clusters:
    """Spherical k-means for each k of ``candidates`` (each ≥ 2), and the clustering whose mean silhouette (cosine
    distance, scikit-learn's ``silhouette_score`` on a seeded sample of at most ``sample`` items) is the highest,
    ties to the smaller k; its ``selection`` holds the criterion and every candidate's score. The silhouette weighs
    how much nearer each item is to its own cluster than to the next one: it peaks where the clusters are both tight
    and apart, and needs no labels."""
    from sklearn.metrics import silhouette_score

    x = unit_embeddings(embeddings)
    n = len(x)
    size = min(n, int(sample))
    scores: dict[int, float] = {}
    best: Clusters | None = None
    best_score = -np.inf
    for k in candidates:
        clusters = cluster_embeddings(x, k=int(k), labels=labels, restarts=restarts)
        if len(np.unique(clusters.cluster)) < 2:  # k-means left one cluster: the silhouette is undefined
            score = -1.0
        else:
            score = float(
                silhouette_score(x, clusters.cluster, metric="cosine", sample_size=size, random_state=KMEANS_SEED)
            )
        scores[int(k)] = score
        if best is None or score > best_score:  # strictly: a tie keeps the smaller k
            best, best_score = clusters, score
    if best is None:
        raise UserError("k=[…]: the range holds no k; give k=[low,high] with low <= high.")
    best.selection = {
        "criterion": f"the highest mean silhouette (cosine) on {size} of {n} items",
        "silhouette": {str(k): round(v, 6) for k, v in scores.items()},
    }
    return best
