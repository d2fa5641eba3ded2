"""The root of every error the lab tools raise on purpose."""


class LabError(Exception):
    """Something the lab tools could not do; the message says what and where."""
