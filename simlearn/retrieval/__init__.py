"""Retrieval: finding neighbours among embeddings, for every search path (``simlearn-search``, the service, the
vector database, the metrics): the one exact search (:mod:`simlearn.retrieval.exact`, its checked inputs
:mod:`simlearn.retrieval.inputs`, the optional faiss :mod:`simlearn.retrieval.faiss_lib`), what a gallery is searched
through (:mod:`simlearn.retrieval.candidates`), a gallery
from any source and the one search of it (:mod:`simlearn.retrieval.gallery`), the fingerprinted cache of embeddings
(:mod:`simlearn.retrieval.cache`), the one schema of a result (:mod:`simlearn.retrieval.result`) and the
post-processing of a ranking (:mod:`simlearn.retrieval.postprocess`: query expansion, database-side augmentation,
k-reciprocal re-ranking), the LanceDB store of embeddings (:mod:`simlearn.retrieval.vectordb`) and binary
codes searched by Hamming distance (:mod:`simlearn.retrieval.codes`).

The names below are imported on first use (PEP 562): the metrics import :mod:`simlearn.retrieval.exact` while
:mod:`simlearn.retrieval.gallery` needs the inference model, which needs the metrics' models; an eager package
would import them in a circle."""

from __future__ import annotations

import importlib
from typing import Any

#: each public name and the module that defines it
_HOMES = {
    "AlphaQueryExpansion": "simlearn.retrieval.postprocess",
    "CACHE_VERSION": "simlearn.retrieval.cache",
    "CandidateSource": "simlearn.retrieval.candidates",
    "CodeIndex": "simlearn.retrieval.codes",
    "DatabaseAugmentation": "simlearn.retrieval.postprocess",
    "EXACT_METHOD": "simlearn.retrieval.gallery",
    "FaissIndex": "simlearn.retrieval.candidates",
    "Gallery": "simlearn.retrieval.gallery",
    "KReciprocalReranking": "simlearn.retrieval.postprocess",
    "LanceCandidates": "simlearn.retrieval.vectordb",
    "NeighbourChunk": "simlearn.retrieval.exact",
    "Neighbours": "simlearn.retrieval.exact",
    "PostProcessor": "simlearn.retrieval.postprocess",
    "PreparedGallery": "simlearn.retrieval.inputs",
    "QueryGallery": "simlearn.retrieval.inputs",
    "RESULT_FIELDS": "simlearn.retrieval.result",
    "Ranking": "simlearn.retrieval.postprocess",
    "RetrievalResult": "simlearn.retrieval.gallery",
    "SearchData": "simlearn.retrieval.inputs",
    "apply_postprocess": "simlearn.retrieval.postprocess",
    "code_index": "simlearn.retrieval.codes",
    "encoder_code_bits": "simlearn.retrieval.codes",
    "faiss_installed": "simlearn.retrieval.faiss_lib",
    "file_stats": "simlearn.retrieval.cache",
    "fingerprint": "simlearn.retrieval.cache",
    "gallery_from_arrays": "simlearn.retrieval.gallery",
    "gallery_from_database": "simlearn.retrieval.gallery",
    "gallery_from_folder": "simlearn.retrieval.gallery",
    "gallery_from_npz": "simlearn.retrieval.gallery",
    "gallery_index": "simlearn.retrieval.candidates",
    "hamming_top_k": "simlearn.retrieval.codes",
    "load_gallery": "simlearn.retrieval.gallery",
    "neighbour_chunks": "simlearn.retrieval.exact",
    "pack_codes": "simlearn.retrieval.codes",
    "postprocess_names": "simlearn.retrieval.postprocess",
    "postprocessed_ranker": "simlearn.retrieval.postprocess",
    "postprocessors": "simlearn.retrieval.postprocess",
    "prepare_gallery": "simlearn.retrieval.inputs",
    "query_gallery": "simlearn.retrieval.inputs",
    "result_row": "simlearn.retrieval.result",
    "run_search": "simlearn.retrieval.gallery",
    "score_error_bound": "simlearn.retrieval.exact",
    "search_data": "simlearn.retrieval.inputs",
    "search_gallery": "simlearn.retrieval.gallery",
    "search_index": "simlearn.retrieval.gallery",
    "search_ranking": "simlearn.retrieval.postprocess",
    "top_k": "simlearn.retrieval.exact",
    "unpack_signs": "simlearn.retrieval.codes",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'simlearn.retrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
