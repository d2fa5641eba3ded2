"""The sections of the checklists' reports (REQ-COMP-12), filled from what a run found.

Daily: incidents, alert statistics, system state, response status. Weekly:
incidents of the week, vulnerabilities, performance analysis, improvements.
Monthly: security posture of the month, risk assessment, compliance status,
improvement plan. Each checklist names its sections (`report_sections` in
its YAML); each name has a builder here.

Sources: the core hosts' `events` facts (security events from the audit log:
counts over 1, 7 and 31 days, incidents and responses with time, action,
target and outcome - never a record's details), their `plugins` facts, the
check results and the checklist items with their attestations. A section
with nothing to show says so ("none recorded"), never leaves itself out.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from compliance.catalog import Catalog
from compliance.checks import Check
from compliance.controls import JUDGEMENT, NOT_APPLICABLE, SATISFIED, controls_in_run
from compliance.markdown import cell

SEVERITIES = ("critical", "high", "medium", "low")

# What a run's missing value means, in words: None would say nothing to an auditor.
ABSENT = {"limit": "all hosts", "waivers_sha256": "no waivers", "previous": "none: the first"}


def run_value(key: str, value: Any) -> str:
    """A field of a run (run.json) as an auditor reads it: an absent value in words."""
    if value is None or value == "":
        return ABSENT.get(key, "none")
    return str(value)


@dataclass
class Section:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    empty: str = "none recorded"
    note: str = ""


@dataclass
class RunData:
    hosts: list[dict[str, Any]]
    facts: dict[str, dict[str, Any]]
    results: list[dict[str, Any]]
    items: list[dict[str, Any]]
    checks: dict[str, Check]
    now: datetime.datetime

    def core_events(self) -> dict[str, dict[str, Any]]:
        """Host -> its `events` facts, for the hosts that have them (the core hosts)."""
        return {
            h: f["events"]
            for h, f in sorted(self.facts.items())
            if isinstance(f.get("events"), dict)
        }


def _listed(run: RunData, kind: str, days: int, title: str) -> Section:
    section = Section(title, ["host", "time", "action", "target", "outcome"])
    since = run.now - datetime.timedelta(days=days)
    for host, events in run.core_events().items():
        for event in events.get(kind, []):
            if datetime.datetime.fromisoformat(event["at"]) >= since:
                section.rows.append(
                    [host, event["at"], event["action"], event["target"], event["outcome"]]
                )
    if not run.core_events():
        section.empty = "no core host was gathered: the audit log could not be read"
    return section


def _counts(run: RunData, window: str, title: str) -> Section:
    section = Section(title, ["host", "event", "outcome", f"count ({window})"])
    for host, events in run.core_events().items():
        for key, count in events.get("counts", {}).get(window, {}).items():
            action, _, outcome = key.rpartition(" ")
            section.rows.append([host, action, outcome, str(count)])
    failed = Counter(r["severity"] for r in run.results if r["status"] == "fail")
    section.note = "Failed checks by severity: " + (
        ", ".join(f"{failed[s]} {s}" for s in SEVERITIES if failed[s]) or "none"
    )
    return section


def _with_records(section: Section, run: RunData, days: int) -> Section:
    """SECTION noting the incident records (the core's, REQ-IR-7) open now and those
    closed within DAYS: one record, whichever core host reported it."""
    if not run.core_events():
        section.note = "Incident records: unknown (no core host was gathered)."
        return section
    records: dict[str, dict[str, Any]] = {}
    for events in run.core_events().values():
        for record in events.get("records", []):
            # Every core host of a shared database reports the same records; a copy that
            # says closed is the later one (closing is final).
            if record["id"] not in records or record["closed_at"] is not None:
                records[record["id"]] = record
    since = run.now - datetime.timedelta(days=days)
    opened, closed = [], []
    for number, record in sorted(records.items()):
        brief = f"{number} ({record['severity']}, {record['title']})"
        if record["closed_at"] is None:
            contained = ", ".join(record["contained_hosts"])
            opened.append(
                f"{brief}: {record['phase']}, respond by {record['respond_by']}"
                + (f", contained: {contained}" if contained else "")
            )
        elif datetime.datetime.fromisoformat(record["closed_at"]) >= since:
            closed.append(f"{brief} closed {record['closed_at']}")
    section.note = "Open incidents: " + ("; ".join(opened) or "none")
    section.note += ". Closed in the period: " + ("; ".join(closed) or "none") + "."
    return section


def incidents_today(run: RunData) -> Section:
    return _with_records(_listed(run, "incidents", 1, "Incidents (last 24 hours)"), run, 1)


def incidents_of_the_week(run: RunData) -> Section:
    return _with_records(_listed(run, "incidents", 7, "Incidents of the week"), run, 7)


def alert_statistics(run: RunData) -> Section:
    return _counts(run, "1d", "Alert statistics (last 24 hours)")


def security_posture(run: RunData) -> Section:
    section = _counts(run, "31d", "Security posture of the month")
    passed = sum(r["status"] == "pass" for r in run.results)
    unapplied = sum(r["status"] == "not_applicable" for r in run.results)
    section.note += f". Checks passed: {passed} of {len(run.results) - unapplied}"
    section.note += f" ({unapplied} not applicable)." if unapplied else "."
    return section


def system_state(run: RunData) -> Section:
    section = Section("System state", ["host", "gathered", "service", "checks"])
    for host in run.hosts:
        name = host["host"]
        mine = Counter(r["status"] for r in run.results if r["host"] == name)
        service = (run.facts.get(name) or {}).get("service")
        ready = (
            "-"
            if not isinstance(service, dict)
            else ("ready" if service.get("ready") else "NOT READY")
        )
        gathered = f"error: {host['error']}" if host.get("error") else "yes"
        section.rows.append(
            [name, gathered, ready, ", ".join(f"{n} {s}" for s, n in sorted(mine.items()))]
        )
    return section


def response_status(run: RunData) -> Section:
    section = _listed(run, "responses", 1, "Response status (last 24 hours)")
    attested = [i for i in run.items if i.get("attestation")]
    pending = [i["id"] for i in run.items if i["status"] == "pending"]
    section.note = (
        "Attested: "
        + (", ".join(f"{i['id']} by {i['attestation']['by']}" for i in attested) or "nothing yet")
        + ". Pending: "
        + (", ".join(pending) or "nothing")
        + "."
    )
    return section


def vulnerabilities(run: RunData) -> Section:
    section = Section("Vulnerabilities", ["host", "check", "status", "what was found"])
    for r in run.results:
        if r["check"] in (
            "patches.security_updates",
            "software.signed_sources",
            "integrity.aide",
            "tls.policy",
            "certificates.validity",
        ):
            section.rows.append([r["host"], r["check"], r["status"], r["detail"]])
    return section


def performance_analysis(run: RunData) -> Section:
    section = Section("Performance analysis", ["host", "plugin", "state", "trust score"])
    for host, facts in sorted(run.facts.items()):
        for name, plugin in sorted(((facts.get("plugins") or {}).get("registered") or {}).items()):
            section.rows.append([host, name, plugin["state"], str(plugin["score"])])
    seconds = [f"{h['host']} {h.get('seconds')} s" for h in run.hosts if not h.get("error")]
    section.note = "Gathering time per host: " + (", ".join(seconds) or "none") + "."
    return section


def _plan(run: RunData, title: str) -> Section:
    section = Section(
        title,
        ["severity", "check", "hosts", "remediation"],
        empty="nothing failed: no improvement is due from the checks",
    )
    failing: dict[str, list[str]] = {}
    for r in run.results:
        if r["status"] == "fail":
            failing.setdefault(r["check"], []).append(r["host"])
    ranked = sorted(
        failing,
        key=lambda c: (SEVERITIES.index(run.checks[c].severity) if c in run.checks else 9, c),
    )
    for check in ranked:
        known = run.checks.get(check)
        section.rows.append(
            [
                known.severity if known else "?",
                check,
                ", ".join(sorted(failing[check])),
                known.remediation.strip() if known else "",
            ]
        )
    return section


def improvements(run: RunData) -> Section:
    return _plan(run, "Improvements")


def improvement_plan(run: RunData) -> Section:
    return _plan(run, "Improvement plan")


def risk_assessment(run: RunData) -> Section:
    section = Section(
        "Risk assessment",
        ["status", "severity", "count", "waivers"],
        empty="no failed or waived check",
    )
    grouped: Counter = Counter()
    waivers: dict[tuple[str, str], set[str]] = {}
    for r in run.results:
        if r["status"] in ("fail", "waived", "error"):
            key = (r["status"], r["severity"])
            grouped[key] += 1
            if r.get("waiver"):
                w = r["waiver"]
                waivers.setdefault(key, set()).add(
                    f"{r['check']} ({w['approver']}, until {w['expires']})"
                )
    for (status, severity), count in sorted(grouped.items()):
        section.rows.append(
            [status, severity, str(count), "; ".join(sorted(waivers.get((status, severity), ())))]
        )
    return section


def compliance_status(run: RunData) -> Section:
    section = Section(
        "Compliance status",
        ["framework", "controls reviewed", "satisfied", "not satisfied", "not applicable"],
    )
    # Each control as the run judged it from its checks (compliance.controls): what does
    # not apply neither satisfies a control nor fails it (REQ-COMP-17).
    found = controls_in_run(run.results, [], {})
    for framework in sorted({f for f, _ in found}):
        judged = Counter(c.status for (f, _), c in found.items() if f == framework)
        reviewed = sum(judged.values())
        unapplied = judged[NOT_APPLICABLE]
        section.rows.append(
            [
                framework,
                str(reviewed),
                str(judged[SATISFIED]),
                str(reviewed - judged[SATISFIED] - unapplied),
                str(unapplied),
            ]
        )
    counted = Counter(i["status"] for i in run.items)
    listed = ", ".join(f"{n} {s}" for s, n in sorted(counted.items()))
    section.note = f"Checklist items: {listed or 'none'}."
    return section


BUILDERS: dict[str, Callable[[RunData], Section]] = {
    "incidents": incidents_today,
    "alert statistics": alert_statistics,
    "system state": system_state,
    "response status": response_status,
    "incidents of the week": incidents_of_the_week,
    "vulnerabilities": vulnerabilities,
    "performance analysis": performance_analysis,
    "improvements": improvements,
    "security posture of the month": security_posture,
    "risk assessment": risk_assessment,
    "compliance status": compliance_status,
    "improvement plan": improvement_plan,
}


def check_rationales(results: list[dict[str, Any]]) -> Section:
    """Why each check of the run exists: its rationale, which opens with the ids of the
    requirements it verifies. Not one of a checklist's sections: every report has it."""
    section = Section("Why these checks", ["check", "rationale"], empty="no check ran")
    rationales: dict[str, str] = {}
    for r in results:
        rationales.setdefault(r["check"], r.get("rationale") or "")
    section.rows = [[check, rationales[check]] for check in sorted(rationales)]
    return section


def control_sections(
    results: Sequence[Mapping[str, Any]],
    items: Sequence[Mapping[str, Any]],
    attested: Mapping[str, Mapping[str, Sequence[str]]],
    catalogs: Mapping[str, Catalog],
) -> list[Section]:
    """A section per framework: each control the run judged - its status in this run
    (compliance.controls), the checks behind it on each host, the attestations behind
    it (ATTESTED: item id -> the controls its checklist names), and the files of this
    bundle that hold the facts - then the framework's controls this run did not judge.
    Not one of a checklist's sections: every run report has them."""
    found = controls_in_run(results, items, attested)
    sections = []
    for framework, catalog in catalogs.items():
        section = Section(
            f"Controls: {catalog.title} ({framework})",
            ["control", "status in this run", "checks (host: status)", "attestations", "evidence"],
            empty=f"no control of {framework} is judged by this run",
        )
        others = []
        for control in catalog.controls:
            entry = found.get((framework, control.id))
            if entry is None:
                others.append(control.id)
                continue
            section.rows.append(
                [
                    f"{control.id} {control.title}",
                    entry.status,
                    _checks_behind(entry.results),
                    "; ".join(_attestation_behind(i) for i in entry.items),
                    _evidence_behind(entry.results, entry.items),
                ]
            )
        section.note = f"{JUDGEMENT} Not judged by this run: " + (
            f"{len(others)} controls ({', '.join(others)})." if others else "none."
        )
        sections.append(section)
    return sections


def _checks_behind(results: Sequence[Mapping[str, Any]]) -> str:
    hosts: dict[str, list[str]] = {}
    for r in results:
        status = r["status"]
        if r.get("waiver") and status == "waived":
            status += f" (waiver of {r['waiver']['approver']} until {r['waiver']['expires']})"
        hosts.setdefault(r["check"], []).append(f"{r['host']}: {status}")
    return "; ".join(f"{check} ({', '.join(found)})" for check, found in sorted(hosts.items()))


def _attestation_behind(item: Mapping[str, Any]) -> str:
    attestation = item.get("attestation")
    if not attestation:
        return f"{item['id']}: pending (no attestation in its period)"
    shown = [str(f.get("name")) for f in attestation.get("files") or []]
    return f"{item['id']}: attested by {attestation['by']} at {attestation['at']}" + (
        f", files shown: {', '.join(shown)}" if shown else ""
    )


def _evidence_behind(
    results: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]]
) -> str:
    files = ["results.json"] if results else []
    files += [f"facts/{host}.json" for host in sorted({r["host"] for r in results})]
    if items:
        files.append("checklist.json")
    return ", ".join(files)


def build_sections(names: tuple[str, ...], run: RunData) -> list[Section]:
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise ValueError(f"report sections without a builder: {', '.join(unknown)}")
    return [BUILDERS[name](run) for name in names]


def markdown_sections(sections: list[Section]) -> list[str]:
    lines: list[str] = []
    for section in sections:
        lines += ["", f"## {section.title}", ""]
        if section.rows:
            lines.append("| " + " | ".join(section.columns) + " |")
            lines.append("|" + " --- |" * len(section.columns))
            for row in section.rows:
                lines.append("| " + " | ".join(cell(c) for c in row) + " |")
        else:
            lines.append(f"_{section.empty}_")
        if section.note:
            lines += ["", section.note]
    return lines
