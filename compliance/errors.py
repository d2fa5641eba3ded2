"""The root of every error the compliance package raises on purpose.

The command line catches `ComplianceError` and prints its one-line message; anything
else is a bug and keeps its traceback.
"""


class ComplianceError(Exception):
    """A known failure (bad input, a broken catalog, an unreachable host); the message says what."""
