"""Retrieval: using trained embeddings to find neighbours. So far the post-processing of a ranking
(:mod:`simlearn.retrieval.postprocess`): query expansion, database-side augmentation, k-reciprocal re-ranking."""

from simlearn.retrieval.postprocess import (
    AlphaQueryExpansion,
    DatabaseAugmentation,
    KReciprocalReranking,
    PostProcessor,
    Ranking,
    apply_postprocess,
    postprocess_names,
    postprocessed_ranker,
    postprocessors,
    search_ranking,
)

__all__ = [
    "AlphaQueryExpansion",
    "DatabaseAugmentation",
    "KReciprocalReranking",
    "PostProcessor",
    "Ranking",
    "apply_postprocess",
    "postprocess_names",
    "postprocessed_ranker",
    "postprocessors",
    "search_ranking",
]
