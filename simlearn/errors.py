"""Errors that describe a user mistake (bad config, missing data) rather than a bug.

The command-line entry points print these as one clear message and exit non-zero, without a traceback.
"""


class UserError(ValueError):
    """A mistake in the user's input: the message says what is wrong, what is valid and how to fix it."""
