"""Errors of the lab manager."""


class LabError(Exception):
    """Something the lab manager could not do; the message says what and where."""
