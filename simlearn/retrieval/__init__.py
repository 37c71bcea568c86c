"""Retrieval: using trained embeddings to find neighbours. So far the one schema of a search result
(:mod:`simlearn.retrieval.result`)."""

from simlearn.retrieval.result import RESULT_FIELDS, result_row

__all__ = ["RESULT_FIELDS", "result_row"]
