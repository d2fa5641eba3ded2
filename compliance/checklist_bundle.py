"""A checklist run's own files in its evidence bundle: its items, reports and OSCAL.

`compliance checklist run` (and the scheduler's `schedule run`) gathers, runs
the checks, then asks this module for what the checklist adds to the bundle:
every item's status from the results and the attestations of its period
(checklist.json), the report with the checklist's sections and a section per
framework leading from each control to the facts (report.md, report.html) and
the run as OSCAL assessment results. Anything that makes
checklist runs - a test on a clock of its own included - goes through here, so
the bundles it makes are the ones the command makes.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compliance.attestations import Attesters
from compliance.catalog import Catalog
from compliance.checklist_run import ItemResult, markdown, run_items
from compliance.checklists import Checklist
from compliance.checks import Check
from compliance.engine import Result
from compliance.html_report import render
from compliance.oscal import assessment_results
from compliance.report_sections import RunData, build_sections, control_sections


@dataclass
class ChecklistFiles:
    items: list[ItemResult]
    markdown: str
    files: dict[str, bytes]  # bundle-relative name -> content


def oscal_json(document: dict) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


def checklist_files(
    checklist: Checklist,
    checks: list[Check],
    catalogs: Mapping[str, Catalog],
    document: dict[str, Any],
    results: list[Result],
    run: dict[str, Any],
    facts: dict[str, Any],
    store: Path,
    attesters: Attesters | None,
    now: datetime.datetime | None = None,
) -> ChecklistFiles:
    """DOCUMENT is the run's hosts, results (as dicts) and start time; NOW the time whose
    period's attestations count (default: the current time)."""
    items = run_items(checklist, results, store, now=now, attesters=attesters)
    listed = [i.as_dict() for i in items]
    data = RunData(
        document["hosts"],
        facts,
        document["results"],
        listed,
        {c.id: c for c in checks},
        document["started"],
    )
    sections = build_sections(checklist.report_sections, data)
    attested = {
        i.id: i.attested_controls for i in checklist.items if i.attested_controls is not None
    }
    controls = control_sections(document["results"], listed, attested, catalogs)
    text = markdown(
        checklist,
        items,
        document["hosts"],
        document["started"],
        sections,
        document["results"],
        controls,
    )
    page = render(
        checklist.title, run, document["hosts"], document["results"], listed, sections, controls
    )
    oscal = assessment_results(
        checklist.title, run, document["hosts"], document["results"], listed, attested
    )
    return ChecklistFiles(
        items,
        text,
        {
            "report.md": text.encode(),
            "report.html": page.encode(),
            "assessment-results.json": oscal_json(oscal),
            "checklist.json": (json.dumps(listed, indent=2) + "\n").encode(),
        },
    )
