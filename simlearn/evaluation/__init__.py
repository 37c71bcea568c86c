"""Evaluation: exact retrieval metrics and class-to-class similarity reports."""

from simlearn.evaluation.retrieval import retrieval_metrics
from simlearn.evaluation.similarity import ClassSimilarity, class_similarity

__all__ = ["ClassSimilarity", "class_similarity", "retrieval_metrics"]
