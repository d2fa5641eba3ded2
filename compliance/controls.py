"""How a run judges a control: the one rule for every report that says so.

A run's check results name the controls each check supports; a checklist's
items name the controls their attestation supports. A control's status in one
run is judged from what supports it there: any failure (a waived one and a host
not checked too) fails it; a pending attestation leaves it pending; otherwise a
pass or an attestation satisfies it; what does not apply neither satisfies nor
fails it (REQ-COMP-17).

The run reports' per-control sections and the monthly compliance status
(compliance.report_sections), the OSCAL findings (compliance.oscal) and the
period report's status of each control day by day (compliance.period) read
it from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# A control in a run (and, in the period report, on a day).
FAILED, PENDING, SATISFIED, NOT_APPLICABLE = "failed", "pending", "satisfied", "not applicable"
FAILING = ("fail", "waived", "error")  # a result that does not pass
JUDGEMENT = (
    "A run fails a control when any check behind it failed there, waived or not, or could "
    "not be checked on a host; it leaves it pending when an attestation behind it was "
    "pending; what does not apply neither satisfies nor fails it."
)


def judged(statuses: set[str]) -> str | None:
    """A control's status in one run, from the statuses of what supports it there
    (results' statuses, "attested" and "pending" for attestations). None: nothing in
    the run covers it."""
    if statuses & set(FAILING):
        return FAILED
    if "pending" in statuses:
        return PENDING
    if statuses & {"pass", "attested"}:
        return SATISFIED
    return NOT_APPLICABLE if statuses else None


@dataclass
class ControlInRun:
    """A control as one run judged it, and what it was judged on."""

    framework: str
    id: str
    results: list[Mapping[str, Any]] = field(default_factory=list)  # the check results
    items: list[Mapping[str, Any]] = field(default_factory=list)  # the attestable items

    @property
    def statuses(self) -> set[str]:
        return {r["status"] for r in self.results} | {attestation_state(i) for i in self.items}

    @property
    def status(self) -> str:
        return judged(self.statuses) or NOT_APPLICABLE  # it has a result or an item


def attestation_state(item: Mapping[str, Any]) -> str:
    """An attestable item's part in a run: attested, or pending (never a pass)."""
    return "attested" if item.get("attestation") else "pending"


def controls_in_run(
    results: Iterable[Mapping[str, Any]],
    items: Iterable[Mapping[str, Any]],
    attested: Mapping[str, Mapping[str, Sequence[str]]],
) -> dict[tuple[str, str], ControlInRun]:
    """(framework, control) -> the control in the run of RESULTS and ITEMS: the results
    whose check supports it (the controls each result names), and the items whose
    attestation does (ATTESTED: item id -> the controls its checklist names for it)."""
    found: dict[tuple[str, str], ControlInRun] = {}

    def entry(framework: str, control: str) -> ControlInRun:
        return found.setdefault((framework, control), ControlInRun(framework, control))

    for result in results:
        for framework, ids in (result.get("controls") or {}).items():
            for control in ids:
                entry(framework, control).results.append(result)
    for item in items:
        for framework, ids in (attested.get(item["id"]) or {}).items():
            for control in ids:
                entry(framework, control).items.append(item)
    return found
