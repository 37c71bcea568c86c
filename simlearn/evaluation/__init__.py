"""Evaluation: the metrics of a split's embeddings (exact retrieval, kNN accuracy, pair ROC-AUC) over the one
neighbour search. What is written after testing (similarity, plots, probe) lives in :mod:`simlearn.reports`."""

from simlearn.evaluation.evaluators import RetrievalEvaluator
from simlearn.evaluation.pairs import PairEvaluator, pair_metrics
from simlearn.evaluation.retrieval import knn_accuracy, retrieval_metrics

__all__ = ["PairEvaluator", "RetrievalEvaluator", "knn_accuracy", "pair_metrics", "retrieval_metrics"]
