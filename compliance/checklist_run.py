"""A checklist run: every item's status from its checks' results and its attestation.

An item's checks pass when every applicable host passes them (a waived
failure counts as waived, not failed); its attestation is `attested` when a
person recorded one in the checklist's current period, else `pending`. The
item's status is the worst of its parts: error, fail, pending, waived, pass,
not_applicable. A check that does not apply to a host (REQ-COMP-17) leaves the
item done, and never outweighs a failure of another host or check; an item is
not_applicable only when nothing of it applied anywhere.
Only an attestation signed by the key the attesters file pins for its name
counts; any other record of the period is listed as not counted, with why.
"""

from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compliance.attestations import Attesters, current, period_of
from compliance.checklists import Checklist
from compliance.engine import Result
from compliance.markdown import cell
from compliance.report_sections import Section, check_rationales, markdown_sections

ORDER = ("error", "fail", "pending", "waived", "pass", "not_applicable")


@dataclass
class ItemResult:
    id: str
    title: str
    source: str
    status: str
    checks: dict[str, dict[str, int]] = field(default_factory=dict)  # check -> status counts
    failing: list[str] = field(default_factory=list)  # "check on host: detail"
    not_applicable: list[str] = field(default_factory=list)  # "check on host: why"
    attestation: dict[str, Any] | None = None
    not_counted: list[str] = field(default_factory=list)  # attestations refused, and why

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_items(
    checklist: Checklist,
    results: list[Result],
    store: Path,
    now: datetime.datetime | None = None,
    attesters: Attesters | None = None,
) -> list[ItemResult]:
    by_check: dict[str, list[Result]] = {}
    for result in results:
        by_check.setdefault(result.check, []).append(result)
    items = []
    for item in checklist.items:
        statuses = []
        outcome = ItemResult(item.id, item.title, item.source, "pass")
        for check in item.checks:
            found = by_check.get(check, [])
            outcome.checks[check] = dict(Counter(r.status for r in found))
            statuses += [r.status for r in found] or ["error"]
            if not found:
                outcome.failing.append(f"{check}: no host it applies to was checked")
            outcome.failing += [
                f"{check} on {r.host}: {r.detail}" for r in found if r.status in ("fail", "error")
            ]
            outcome.not_applicable += [
                f"{check} on {r.host}: {r.detail}" for r in found if r.status == "not_applicable"
            ]
        if item.attested_controls is not None:
            attestation, outcome.not_counted = current(
                store, checklist.name, item.id, now, attesters
            )
            if attestation is None:
                statuses.append("pending")
            else:
                outcome.attestation = attestation.as_dict()
        outcome.status = next(s for s in ORDER if s in statuses) if statuses else "pass"
        items.append(outcome)
    return items


def markdown(
    checklist: Checklist,
    items: list[ItemResult],
    hosts: list[dict[str, Any]],
    when: datetime.datetime,
    sections: list[Section] | None = None,
    results: list[dict[str, Any]] | None = None,
    controls: list[Section] | None = None,
) -> str:
    """The report: SECTIONS, the items and, given the check RESULTS, why each check ran,
    then CONTROLS (the per-control sections: report_sections.control_sections)."""
    counts = Counter(i.status for i in items)
    lines = [
        f"# {checklist.title} - {period_of(checklist.name, when)}",
        "",
        f"Run {when.isoformat()} over {len(hosts)} hosts ({', '.join(h['host'] for h in hosts)}).",
        "",
        "Summary: " + ", ".join(f"{counts[s]} {s}" for s in ORDER if counts[s]),
        "",
        f"Report sections (REQ-COMP-12): {', '.join(checklist.report_sections)}.",
        *markdown_sections(sections or []),
        "",
        "## Checklist items",
        "",
        "| item | status | how | source |",
        "| --- | --- | --- | --- |",
    ]
    for item in items:
        how = []
        if item.checks:
            how.append(
                "checks: "
                + ", ".join(
                    f"{c} ({', '.join(f'{n} {s}' for s, n in sorted(k.items()))})"
                    for c, k in item.checks.items()
                )
            )
        if item.attestation:
            how.append(
                f"attested by {item.attestation['by']} at {item.attestation['at']} "
                f"(signed, key {item.attestation['signed_by'][:16]}...): "
                f"{item.attestation['note']}"
            )
        elif item.status == "pending" or (item.attestation is None and not item.checks):
            how.append("attestation pending")
        lines.append(
            f"| {cell(f'{item.id} {item.title}')} | **{item.status}** | {cell('; '.join(how))} "
            f"| {cell(item.source)} |"
        )
    if results is not None:
        lines += markdown_sections([check_rationales(results)])
    problems = [(i.id, f) for i in items for f in i.failing]
    if problems:
        lines += ["", "## What failed", ""]
        lines += [f"- {item}: {failure}" for item, failure in problems]
    unapplied = [(i.id, why) for i in items for why in i.not_applicable]
    if unapplied:
        lines += ["", "## Not applicable (why)", ""]
        lines += [f"- {item}: {why}" for item, why in unapplied]
    refused = [(i.id, why) for i in items for why in i.not_counted]
    if refused:
        lines += ["", "## Attestations not counted (unverified)", ""]
        lines += [f"- {item}: {why}" for item, why in refused]
    errors = [h for h in hosts if h.get("error")]
    if errors:
        lines += ["", "## Hosts not checked", ""]
        lines += [f"- {h['host']}: {h['error']}" for h in errors]
    lines += markdown_sections(controls or [])
    return "\n".join(lines) + "\n"
