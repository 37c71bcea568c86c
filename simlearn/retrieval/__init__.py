"""Retrieval: using trained embeddings to find neighbours, for every search path (``simlearn-search``, the service, the
vector database): what a gallery is searched through (:mod:`simlearn.retrieval.candidates`), a gallery from any
source and the one search of it (:mod:`simlearn.retrieval.gallery`), the fingerprinted cache of embeddings
(:mod:`simlearn.retrieval.cache`) and the one schema of a result (:mod:`simlearn.retrieval.result`)."""

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
from simlearn.retrieval.result import RESULT_FIELDS, result_row

__all__ = [
    "CACHE_VERSION",
    "RESULT_FIELDS",
    "CandidateSource",
    "FaissIndex",
    "Gallery",
    "file_stats",
    "fingerprint",
    "gallery_from_arrays",
    "gallery_from_database",
    "gallery_from_folder",
    "gallery_from_npz",
    "gallery_index",
    "load_gallery",
    "result_row",
    "run_search",
    "search_index",
]
