"""Retrieval: using trained embeddings to find neighbours, for every search path (``simlearn-search``, the service, the
vector database, the metrics): what a gallery is searched through (:mod:`simlearn.retrieval.candidates`), a gallery
from any source and the one search of it (:mod:`simlearn.retrieval.gallery`), the fingerprinted cache of embeddings
(:mod:`simlearn.retrieval.cache`), the one schema of a result (:mod:`simlearn.retrieval.result`) and the
post-processing of a ranking (:mod:`simlearn.retrieval.postprocess`: query expansion, database-side augmentation,
k-reciprocal re-ranking)."""

from simlearn.retrieval.cache import CACHE_VERSION, file_stats, fingerprint
from simlearn.retrieval.candidates import CandidateSource, FaissIndex, gallery_index
from simlearn.retrieval.gallery import (
    Gallery,
    gallery_from_arrays,
    gallery_from_database,
    gallery_from_folder,
    gallery_from_npz,
    load_gallery,
    run_search,
    search_index,
)
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
from simlearn.retrieval.result import RESULT_FIELDS, result_row

__all__ = [
    "CACHE_VERSION",
    "RESULT_FIELDS",
    "AlphaQueryExpansion",
    "CandidateSource",
    "DatabaseAugmentation",
    "FaissIndex",
    "Gallery",
    "KReciprocalReranking",
    "PostProcessor",
    "Ranking",
    "apply_postprocess",
    "file_stats",
    "fingerprint",
    "gallery_from_arrays",
    "gallery_from_database",
    "gallery_from_folder",
    "gallery_from_npz",
    "gallery_index",
    "load_gallery",
    "postprocess_names",
    "postprocessed_ranker",
    "postprocessors",
    "result_row",
    "run_search",
    "search_index",
    "search_ranking",
]
