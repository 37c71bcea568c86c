"""Organising a collection of embeddings at once: clusters (:mod:`.clusters`), near-duplicate groups
(:mod:`.duplicates`), the odd ones out (:mod:`.outliers`) and the held-out items with a near-copy in the training
split (:mod:`.leaks`); :mod:`.command` is ``simlearn-organise``. Each works on the (N, d) embeddings of a gallery as a
model made them (scaled to unit rows here) and never builds an N × N matrix: the neighbour searches go through the
one exact search, :func:`simlearn.retrieval.exact.top_k`, which works in chunks of queries."""

from simlearn.organise.clusters import Clusters, cluster_embeddings
from simlearn.organise.duplicates import DuplicateGroups, find_duplicates
from simlearn.organise.leaks import Leak, Leaks, leaks, write_leaks
from simlearn.organise.outliers import Uniqueness, uniqueness

__all__ = [
    "Clusters",
    "DuplicateGroups",
    "Leak",
    "Leaks",
    "Uniqueness",
    "cluster_embeddings",
    "find_duplicates",
    "leaks",
    "uniqueness",
    "write_leaks",
]
