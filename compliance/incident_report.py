"""The post-incident report of a closed incident (REQ-IR-7), in Markdown and HTML.

Made from the incident's record as the core keeps it (`securecore incident show`):
the summary, the timeline (each entry with its audit record's number), the scope,
the containment (contained and released hosts, backups and forensic bundles with
their SHA-256), the cause, the fixes, the verification and the follow-ups. Both
are made from the same sections, so they say the same. Everything that came from
the record is escaped (HTML) or kept inside its cell (Markdown): a note can never
become markup.
"""

from __future__ import annotations

from html import escape
from typing import Any

from compliance.errors import ComplianceError
from compliance.html_report import page_start, sections_html
from compliance.markdown import cell
from compliance.report_sections import Section, markdown_sections


class IncidentReportError(ComplianceError):
    """The record cannot be reported on (named in the message)."""


REQUIRED = ("id", "title", "severity", "phase", "timeline", "opened_at", "closed_at")


def sections(record: dict[str, Any]) -> list[Section]:
    """The report's sections, from RECORD (IncidentReportError if it is not a closed
    incident's record)."""
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise IncidentReportError(f"not an incident record: no {', '.join(missing)}")
    if record["phase"] != "closed":
        raise IncidentReportError(
            f"{record['id']} is {record['phase']}, not closed: a post-incident report is "
            "made once the incident is closed"
        )
    summary = Section("Summary", ["", ""])
    response = f"level {record['response_level']}, respond by {record['respond_by']}"
    escalation = f"level {record['escalation_level']}: the {record['team']} team by " + ", ".join(
        record["channels"]
    )
    summary.rows = [
        ["Incident", f"{record['id']}: {record['title']}"],
        ["Severity and impact", f"{record['severity']}, {record['impact']}"],
        ["Detected by", record["source"]],
        ["Response", response],
        ["Escalation", escalation],
        ["Opened", f"{record['opened_at']} by {record['opened_by']}"],
        ["Closed", f"{record['closed_at']} by {record['closing']['by']}"],
        ["How it ended", record["closing"]["summary"]],
    ]
    timeline = Section("Timeline", ["#", "time", "who", "what", "details", "audit record"])
    timeline.rows = [
        [
            str(event["number"]),
            event["time"],
            event["actor"],
            event["kind"],
            _details(event["details"]),
            str(event["audit_sequence"]),
        ]
        for event in record["timeline"]
    ]
    scope = Section("Scope", ["affected"], empty="no scope recorded")
    scope.rows = [[record["scope"]]] if record["scope"] else []
    actions = [e for e in record["timeline"] if e["kind"] == "action"]
    containment = Section(
        "Containment", ["time", "action", "hosts", "outcome", "summary"], empty="no action taken"
    )
    containment.rows = [
        [
            e["time"],
            e["details"]["action"],
            ", ".join(e["details"].get("hosts", [])),
            e["details"].get("outcome", "success"),
            e["details"].get("summary", ""),
        ]
        for e in actions
    ]
    artifacts = Section(
        "Backups and evidence", ["time", "kind", "name", "hosts", "SHA-256"], empty="none linked"
    )
    artifacts.rows = [
        [a["time"], a["kind"], a["name"], ", ".join(a["hosts"]), a["sha256"]]
        for a in record["artifacts"]
    ]
    cause = Section("Cause", ["cause"], empty="no cause recorded")
    cause.rows = [[record["cause"]]] if record["cause"] else []
    fixes = Section("Fixes", ["fix"], empty="no fix recorded")
    fixes.rows = [[fix] for fix in record["fixes"]]
    verification = Section(
        "Verification",
        ["time", "stage", "method", "passed", "summary", "checks", "evidence (manifest SHA-256)"],
        empty="nothing verified",
    )
    verification.rows = [
        [
            v["time"],
            v["stage"],
            v["method"],
            "yes" if v["passed"] else "NO",
            v["summary"],
            f"{v.get('checks_passed', '-')} passed, {v.get('checks_failed', '-')} failed",
            v.get("artifact_sha256", "-"),
        ]
        for v in record["verifications"]
    ]
    follow_ups = Section("Follow-ups", ["follow-up"], empty="no follow-up recorded")
    follow_ups.rows = [[item] for item in record["follow_ups"]]
    return [
        summary,
        timeline,
        scope,
        containment,
        artifacts,
        cause,
        fixes,
        verification,
        follow_ups,
    ]


def _details(details: dict[str, Any]) -> str:
    # What an entry changed, in one line; the record's own names, the edge's "via" left out.
    return "; ".join(f"{k}: {_value(v)}" for k, v in details.items() if k != "via")


def _value(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def title(record: dict[str, Any]) -> str:
    return f"Post-incident report: {record['id']}"


def markdown(record: dict[str, Any]) -> str:
    return "\n".join([f"# {cell(title(record))}", *markdown_sections(sections(record))]) + "\n"


def html(record: dict[str, Any]) -> str:
    parts = page_start(title(record))
    parts += sections_html(sections(record))
    parts.append(f"<p><em>From the record of {escape(record['id'])} kept by the core.</em></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
