"""Errors that describe a user mistake (bad config, missing data) rather than a bug.

The command-line entry points print these as one clear message and exit non-zero, without a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class UserError(ValueError):
    """A mistake in the user's input: the message says what is wrong, what is valid and how to fix it."""


def find_user_error(error: BaseException | None) -> UserError | None:
    """The :class:`UserError` that ``error`` is, or was raised from (Hydra wraps what a ``_target_`` raises in its
    ``InstantiationException``); None when there is none."""
    while error is not None:
        if isinstance(error, UserError):
            return error
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def user_errors_unwrapped() -> Iterator[None]:
    """Raise a :class:`UserError` that another exception wraps as itself: what a Python caller catches and reads
    is the one-line message the commands print."""
    try:
        yield
    except Exception as error:
        found = find_user_error(error)
        if found is None or found is error:
            raise
        raise found from None
