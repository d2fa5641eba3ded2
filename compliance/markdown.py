"""Text in the Markdown reports' tables (checklist runs, report sections, period and
post-incident reports)."""

from __future__ import annotations

from html import escape


def cell(value: object) -> str:
    """VALUE as one cell of a Markdown table: on one line, its pipes escaped, and its HTML
    escaped too - Markdown renderers show inline HTML, and a report's text comes from
    hosts, attestations and incident records that others wrote."""
    return escape(str(value), quote=False).replace("|", "\\|").replace("\n", " ")
