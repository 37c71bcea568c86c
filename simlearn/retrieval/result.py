"""The one schema of a search result, whoever answers it: ``simlearn-search``'s ``search.json``, the service's HTTP
answers and the page. A file of embeddings names each item's class ``class_name`` the same way (parquet and
LanceDB rows: :mod:`simlearn.inference.embedding_files`, :mod:`simlearn.retrieval.vectordb`)."""

from __future__ import annotations

from typing import Any

from simlearn.retrieval.vectors import angle_deg

__all__ = ["RESULT_FIELDS", "result_row"]

#: The fields of one result, in order: its rank (1 = most similar), the gallery item's ``id`` (its row in the
#: gallery: LanceDB's ``id`` column), ``name`` and file ``path`` (None for a gallery without files: the ``path``
#: column), its ``class_name`` (None without labels: the ``class_name`` column of parquet and LanceDB,
#: ``class_names[labels[i]]`` of an npz), the ``cosine`` similarity and the angle between the embeddings in degrees
#: (``angle_deg``), and ``same_class``: whether its class is the query's (None when either is unknown).
RESULT_FIELDS = ("rank", "id", "name", "path", "class_name", "cosine", "angle_deg", "same_class")


def result_row(
    rank: int,
    item: int,
    name: str,
    path: str | None,
    class_name: str | None,
    cosine: float,
    query_class: str | None = None,
) -> dict[str, Any]:
    """One result in the fields of :data:`RESULT_FIELDS` (cosine to 6 decimals, angle to 3)."""
    return {
        "rank": int(rank),
        "id": int(item),
        "name": name,
        "path": path,
        "class_name": class_name,
        "cosine": round(float(cosine), 6),
        "angle_deg": round(angle_deg(cosine), 3),
        "same_class": (class_name == query_class) if class_name is not None and query_class is not None else None,
    }
