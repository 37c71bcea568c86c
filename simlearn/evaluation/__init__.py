"""Evaluation: exact retrieval metrics and class-to-class similarity reports."""

from simlearn.evaluation.evaluators import RetrievalEvaluator
from simlearn.evaluation.pairs import PairEvaluator, pair_metrics
from simlearn.evaluation.plots import PlotsReport
from simlearn.evaluation.probe import ProbeReport, plot_circle, probe_similarity
from simlearn.evaluation.retrieval import knn_accuracy, retrieval_metrics
from simlearn.evaluation.similarity import ClassSimilarity, class_similarity

__all__ = [
    "ClassSimilarity",
    "PairEvaluator",
    "PlotsReport",
    "ProbeReport",
    "RetrievalEvaluator",
    "class_similarity",
    "knn_accuracy",
    "pair_metrics",
    "plot_circle",
    "probe_similarity",
    "retrieval_metrics",
]
