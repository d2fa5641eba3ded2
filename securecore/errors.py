"""The root of every error the securecore package raises on purpose.

A caller (the command line above all) catches `SecureCoreError` to tell a known
failure - its message names what is wrong - from a bug, which keeps its traceback.
"""


class SecureCoreError(Exception):
    """A known failure of the service or its tools; the message says what and where."""
