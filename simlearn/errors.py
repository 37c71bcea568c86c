"""Errors that describe a user mistake (bad config, missing data) rather than a bug.

The command-line entry points print these as one clear message and exit non-zero, without a traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input: the message says what is wrong, what is valid and how to fix it."""


def user_error_in(error: BaseException | None) -> UserError | None:
    """The :class:`UserError` that ``error`` is or was raised from (Hydra wraps what a built class raises), or None."""
    while error is not None and not isinstance(error, UserError):
        error = error.__cause__ or error.__context__
    return error
