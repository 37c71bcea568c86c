"""Evaluation: the metrics of a split's embeddings (exact retrieval, kNN accuracy, pair ROC-AUC) over the one
neighbour search. What is written after testing (similarity, plots, probe) lives in :mod:`simlearn.reports`."""

from typing import Any

from simlearn.evaluation.evaluators import RetrievalEvaluator
from simlearn.evaluation.pairs import PairEvaluator, pair_metrics
from simlearn.evaluation.retrieval import knn_accuracy, retrieval_metrics

__all__ = ["PairEvaluator", "RetrievalEvaluator", "knn_accuracy", "pair_metrics", "retrieval_metrics"]

#: names that lived here before the reports moved to simlearn.reports; checkpoints written before store e.g.
#: ``reports.plots._target_: simlearn.evaluation.PlotsReport`` and must still evaluate
_MOVED_TO_REPORTS = (
    "PlotsReport",
    "ProbeReport",
    "ClassSimilarity",
    "class_similarity",
    "plot_circle",
    "probe_similarity",
)


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_REPORTS:
        import simlearn.reports

        return getattr(simlearn.reports, name)
    raise AttributeError(f"module 'simlearn.evaluation' has no attribute {name!r}")
