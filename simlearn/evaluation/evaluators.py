"""Evaluators: the metrics of one split's embeddings. The LightningModule calls one after val and test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from simlearn.errors import UserError
from simlearn.evaluation.clustering import clustering_metrics
from simlearn.evaluation.retrieval import per_class_metrics, retrieval_metrics
from simlearn.fields import GALLERY_FIELD

__all__ = ["RetrievalEvaluator", "has_labels"]

#: when ``clustering`` computes NMI/AMI
CLUSTERING = ("test", "all", None)


def has_labels(fields: Mapping[str, Any]) -> bool:
    """Whether a split's fields hold any label field (unlabelled data has none: only ``is_gallery``, if anything)."""
    return any(name != GALLERY_FIELD for name in fields)


class RetrievalEvaluator:
    """Exact cosine retrieval on ``label_field``: each item of the split is a query against all the others
    (``leave-one-out``), or, when the data marks query and gallery items (field ``is_gallery``: In-Shop's test), each
    query against the gallery (``query-gallery``; ``num_gallery`` says how many).

    ``knn_k`` adds ``knn_accuracy@<k>``: the accuracy of the majority vote of each item's k nearest other items
    (leave-one-out, :func:`~simlearn.evaluation.retrieval.knn_accuracy`), read off the same search; null: off.
    ``clustering`` adds ``nmi`` and ``ami`` (:mod:`simlearn.evaluation.clustering`) of the queries: at test
    (``test``, the default: k-means is too slow to repeat every validation on large data), every split (``all``), or
    never (null).

    ``postprocess``: post-processing steps (names of ``configs/postprocess/`` YAMLs, or steps already built:
    :mod:`simlearn.retrieval.postprocess`), applied in order to the ranking; the test split then also reports the
    retrieval metrics of the post-processed ranking, by the same metric code, prefixed with the steps' names joined
    by ``+`` (``aqe/recall@1``, ``aqe+k_reciprocal/map@r``). Validation skips them, to keep epochs fast.

    Data without labels (``data=image_folder`` on a folder without class folders) has no label field: it gets no
    metric here, only the label-free ones (:mod:`simlearn.evaluation.label_free`, which the model adds).
    ``code_bits`` (a hashing head's ``head.bits``; null for float embeddings): the embeddings are relaxed codes, and
    the metrics are those of their binary codes (signs) under the Hamming distance
    (:func:`~simlearn.evaluation.hamming.hamming_metrics`: the tie rule, ``tie_aware/…``, ``map@1000``), float-free;
    the float relaxation's own metrics are reported as ``float/…`` beside them, for comparison.
    """

    main_metric = "recall@1"

    def __init__(
        self,
        label_field: str,
        ks: Sequence[int] = (1, 5, 10),
        chunk_size: int | None = None,
        knn_k: int | None = None,
        backend: str = "auto",
        clustering: str | None = "test",
        postprocess: str | Sequence[Any] | None = None,
        code_bits: int | None = None,
    ) -> None:
        # imported here: simlearn.retrieval searches through simlearn.retrieval.exact, whose package imports
        # this module
        from simlearn.retrieval.postprocess import postprocessors

        self.postprocess = postprocessors(postprocess, chunk_size=chunk_size, backend=backend)
        if code_bits is not None and self.postprocess:
            raise UserError(
                "evaluation.postprocess re-ranks float embeddings, but head=hash is evaluated on binary codes; "
                "set evaluation.postprocess=[] with head=hash."
            )
        self.code_bits = code_bits
        if clustering not in CLUSTERING:
            raise UserError(f"evaluation.clustering must be test, all or null, got {clustering!r}.")
        self.clustering = clustering
        if knn_k is not None and (isinstance(knn_k, bool) or not isinstance(knn_k, int) or knn_k < 1):
            raise UserError(f"evaluation.knn_k must be null or an integer ≥ 1, got {knn_k!r}; e.g. evaluation.knn_k=5.")
        self.label_field = label_field
        self.ks = tuple(ks)
        self.chunk_size = chunk_size
        self.backend = backend
        self.knn_k = knn_k

    def __call__(self, embeddings: Tensor, fields: Mapping[str, Tensor], split: str = "test") -> dict[str, float]:
        if not has_labels(fields):  # unlabelled data: only the label-free metrics (simlearn.evaluation.label_free)
            return {}
        queries, gallery = self._protocol(embeddings, fields)
        if self.code_bits is not None:
            metrics = self._code_metrics(queries, gallery)
        else:
            metrics = self._float_metrics(queries, gallery, split)
        if gallery[0] is not None:
            metrics["num_gallery"] = float(len(gallery[0]))
        if self.clustering == "all" or (self.clustering == "test" and split == "test"):
            metrics.update(clustering_metrics(*queries))
        return metrics

    def _code_metrics(self, queries: tuple, gallery: tuple) -> dict[str, float]:
        """The Hamming metrics of the codes, and the float relaxation's as ``float/…``."""
        from simlearn.evaluation.hamming import hamming_metrics
        from simlearn.retrieval.codes import pack_codes

        codes = pack_codes(queries[0]), None if gallery[0] is None else pack_codes(gallery[0])
        metrics = hamming_metrics(
            codes[0], queries[1], codes[1], gallery[1], self.ks, knn_k=self.knn_k, chunk_size=self.chunk_size
        )
        floats = self._float_metrics(queries, gallery, "val")
        metrics.update({f"float/{key}": value for key, value in floats.items() if not key.startswith("num_")})
        return metrics

    def _float_metrics(self, queries: tuple, gallery: tuple, split: str) -> dict[str, float]:
        metrics = retrieval_metrics(
            *queries,
            self.ks,
            *gallery,
            chunk_size=self.chunk_size,
            backend=self.backend,
            knn_k=self.knn_k,
        )
        if self.postprocess and split == "test":
            metrics.update(self._postprocessed(queries, gallery))
        return metrics

    def _postprocessed(self, queries: tuple, gallery: tuple) -> dict[str, float]:
        """The retrieval metrics of the post-processed ranking, under the prefix ``<step>+<step>/`` (the query
        counts are those of the plain metrics, so they are not repeated)."""
        from simlearn.retrieval.postprocess import postprocessed_ranker

        rank = postprocessed_ranker(self.postprocess, chunk_size=self.chunk_size, backend=self.backend)
        found = retrieval_metrics(*queries, self.ks, *gallery, knn_k=self.knn_k, rank=rank)
        prefix = "+".join(step.name for step in self.postprocess)
        return {f"{prefix}/{key}": value for key, value in found.items() if not key.startswith("num_")}

    def per_class(self, embeddings: Tensor, fields: Mapping[str, Tensor]) -> list[dict[str, float]]:
        """recall@1 and MAP@R per query class, by the same protocol (:func:`~simlearn.evaluation.retrieval.
        per_class_metrics`); none for unlabelled data."""
        if not has_labels(fields):
            return []
        queries, gallery = self._protocol(embeddings, fields)
        if self.code_bits is not None:  # the ±1 signs: the exact search ranks them as the Hamming search does
            from simlearn.retrieval.codes import pack_codes, unpack_signs

            queries = unpack_signs(pack_codes(queries[0])), queries[1]
            if gallery[0] is not None:
                gallery = unpack_signs(pack_codes(gallery[0])), gallery[1]
        return per_class_metrics(*queries, *gallery, chunk_size=self.chunk_size, backend=self.backend)

    @staticmethod
    def protocol(fields: Mapping[str, Any]) -> str:
        """``query-gallery`` when the items are marked as queries and gallery items, else ``leave-one-out``."""
        role = fields.get(GALLERY_FIELD)
        return "query-gallery" if role is not None and bool((role >= 0).any()) else "leave-one-out"

    @classmethod
    def roles(cls, fields: Mapping[str, Any]) -> tuple[Any, Any] | None:
        """Boolean masks (of the field's type: tensors or arrays) of the queries and of the gallery items, or None
        for leave-one-out (every item a query against all the others): what the metrics search, and the plots."""
        if cls.protocol(fields) == "leave-one-out":
            return None
        role = fields[GALLERY_FIELD]
        return role == 0, role == 1

    def _protocol(self, embeddings: Tensor, fields: Mapping[str, Tensor]) -> tuple[tuple, tuple]:
        """((query embeddings, labels), (gallery embeddings, labels) or (None, None) for leave-one-out)."""
        if self.label_field not in fields:
            raise UserError(
                f"evaluation.label_field={self.label_field!r} is not a field of the data; valid: {sorted(fields)}."
            )
        labels = fields[self.label_field]
        roles = self.roles(fields)
        if roles is None:
            return (embeddings, labels), (None, None)
        query, gallery = roles
        return (embeddings[query], labels[query]), (embeddings[gallery], labels[gallery])
