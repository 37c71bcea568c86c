"""The one result schema (simlearn/retrieval/result.py) of search.json, the HTTP API and the page."""

from __future__ import annotations

from simlearn.retrieval import RESULT_FIELDS, result_row


def test_a_result_row_has_the_one_schema():
    row = result_row(1, 7, "a.png", "a.png", "cat", 0.5, "cat")
    assert tuple(row) == RESULT_FIELDS
    assert row["angle_deg"] == 60.0 and row["same_class"] is True and row["id"] == 7
    assert result_row(2, 3, "x", None, None, 1.0, "cat")["same_class"] is None
