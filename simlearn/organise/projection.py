"""A collection's embeddings drawn in 2-D: a neighbour-preserving t-SNE (scikit-learn) of a seeded sample, or the first
two principal components; the one code path of the run's embedding scatter (:mod:`simlearn.reports.plots`) and of
the service's map (:mod:`simlearn.serve.views`)."""

from __future__ import annotations

import os

import numpy as np

from simlearn.retrieval.vectors import unit_rows

__all__ = ["TSNE_MIN_ITEMS", "principal_axes", "sample_rows", "tsne_points"]

#: fewer items than this have no neighbourhoods for t-SNE to keep (its perplexity must stay below the item count)
TSNE_MIN_ITEMS = 5


def sample_rows(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """The rows drawn: all ``n`` up to ``max_points``, else a seeded random sample of that many, in row order (the
    same sample on every call)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def tsne_points(embeddings: np.ndarray, seed: int = 0, max_iter: int = 500) -> np.ndarray:
    """2-D t-SNE coordinates (N, 2) of the unit rows of ``embeddings`` (N ≥ :data:`TSNE_MIN_ITEMS`): perplexity
    min(30, (N - 1) / 3), PCA start, ``max_iter`` iterations (its time grows with N · ``max_iter``)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = unit_rows(np.asarray(embeddings))
    if len(x) < TSNE_MIN_ITEMS:
        raise ValueError(f"t-SNE needs at least {TSNE_MIN_ITEMS} items, got {len(x)}")
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=max_iter)
    # t-SNE's OpenMP and BLAS threads spin against each other on a busy CPU (measured 20× slower with 2 threads
    # than with 1 on a loaded 2-core machine): use at most half the cores
    with threadpool_limits(limits=max(1, min(4, (os.cpu_count() or 2) // 2))):
        return np.asarray(tsne.fit_transform(x), dtype=np.float64)


def principal_axes(x: np.ndarray, count: int, block: int = 65536) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Mean, the first ``count`` principal axes (d, count) and their shares of the variance, from the d × d
    covariance accumulated in float64 over blocks of rows (no copy of a large gallery)."""
    n, dim = x.shape
    mean = np.zeros(dim)
    for start in range(0, n, block):
        mean += x[start : start + block].astype(np.float64).sum(axis=0)
    mean /= n
    cov = np.zeros((dim, dim))
    for start in range(0, n, block):
        centred = x[start : start + block].astype(np.float64) - mean
        cov += centred.T @ centred
    values, vectors = np.linalg.eigh(cov / max(1, n - 1))
    order = np.argsort(values)[::-1][:count]
    axes = vectors[:, order]
    # a fixed sign per axis (its largest entry positive), so the map does not flip between runs
    axes *= np.where(axes[np.abs(axes).argmax(axis=0), np.arange(count)] < 0, -1.0, 1.0)
    total = float(values.clip(min=0).sum())
    shares = [round(float(values[i]) / total, 4) if total > 0 else 0.0 for i in order]
    return mean, axes, shares
