"""Clustering metrics of embeddings, as the field reports them: NMI and AMI of k-means clusters against the labels.

The definitions are pytorch-metric-learning's (``AccuracyCalculator``): k-means with k = the number of distinct
labels on the embeddings as they are, each item assigned to its nearest centroid, then scikit-learn's
``normalized_mutual_info_score`` and ``adjusted_mutual_info_score`` of the labels and the cluster ids. k-means runs
through faiss (``faiss.Kmeans`` with 20 iterations and faiss's default seed, as PML's ``FaissKMeans(niter=20)``: the
same values as PML's) when faiss is installed, else through scikit-learn (same iterations and seed; k-means is a
local search, so the two can differ slightly).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from simlearn.retrieval.faiss_lib import faiss_installed, import_faiss

log = logging.getLogger(__name__)

#: PML's AccuracyCalculator runs ``faiss.Kmeans(niter=20)`` (faiss's own default is 25) with faiss's default seed;
#: both also given to scikit-learn's KMeans without faiss
KMEANS_ITERATIONS = 20
KMEANS_SEED = 1234


def kmeans_labels(x: np.ndarray, k: int) -> np.ndarray:
    """The k-means cluster id of every row of ``x`` (float32, C order)."""
    if not faiss_installed():
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=k, n_init=1, max_iter=KMEANS_ITERATIONS, random_state=KMEANS_SEED)
        return model.fit_predict(x)
    faiss = import_faiss()  # simlearn's one import of faiss: without the loader's lines that read as errors
    # min_points_per_centroid only decides when faiss prints "WARNING clustering 24 points to 4 centroids: please
    # provide at least 156 training points" (it subsamples by max_points_per_centroid, left at PML's default): on a
    # small test split k = its number of classes is fixed, so the user cannot act on it, and the values are the same
    kmeans = faiss.Kmeans(
        x.shape[1], k, niter=KMEANS_ITERATIONS, seed=KMEANS_SEED, verbose=False, min_points_per_centroid=1
    )
    kmeans.train(x)
    _, assigned = kmeans.index.search(x, 1)
    return assigned[:, 0]


def clustering_metrics(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> dict[str, float]:
    """``nmi`` and ``ami`` of k-means (k = the number of distinct labels) on ``embeddings`` against ``labels``."""
    x = embeddings.detach().float().cpu().numpy() if isinstance(embeddings, torch.Tensor) else embeddings
    y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    x = np.ascontiguousarray(x, dtype=np.float32)
    k = len(np.unique(y))
    if k < 2 or len(y) <= k:
        return {}  # nothing to cluster: one class, or no more items than clusters
    clusters = kmeans_labels(x, k)
    return {
        "nmi": float(normalized_mutual_info_score(y, clusters)),
        "ami": float(adjusted_mutual_info_score(y, clusters)),
    }
