"""The report sections of REQ-COMP-12 filled from a real service's audit log: events
made on a running core service, read by `securecore facts`, shown in the daily and
weekly sections - and a section with nothing to show says so."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from compliance.catalog import load_catalogs
from compliance.checklist_run import markdown, run_items
from compliance.checklists import load_checklist
from compliance.checks import load_checks
from compliance.html_report import render
from compliance.report_sections import RunData, build_sections
from tests.support.devserver import admin, call, dev_server

RESULTS = [
    {
        "check": "patches.security_updates",
        "host": "core-01",
        "status": "fail",
        "severity": "high",
        "controls": {"iso27001-2022": ["A.8.8"]},
        "detail": "2 security updates pending",
        "waiver": None,
        "rationale": "REQ-HARD-12 - patch deadlines (critical within 24 hours).",
        "requirements": ["REQ-HARD-12"],
    },
    {
        "check": "service.ready",
        "host": "core-01",
        "status": "pass",
        "severity": "critical",
        "controls": {"iso27001-2022": ["A.8.16"]},
        "detail": "ready",
        "waiver": None,
        "rationale": "REQ-COMP-8 - system operation status.",
        "requirements": ["REQ-COMP-8"],
    },
]


def test_sections_show_the_incidents_and_responses_of_a_real_service(tmp_path: Path) -> None:
    with dev_server(tmp_path / "dev") as server:
        assert call(server, "GET", "/v1/sessions/current", token="forged")[0] == 401
        admin(server, "emergency-shutdown", "--reason", "plugin zone compromised")
        admin(server, "recover", "--note", "plugin-01 rebuilt")
        admin(server, "acl", "block", "127.0.0.9", "--reason", "scan", "--by", "alice")
        fields = [
            "--title=beaconing",
            "--severity=high",
            "--impact=compromise",
            "--source=monitoring",
        ]
        number = json.loads(admin(server, "incident", "open", *fields).stdout)["id"]
        admin(server, "incident", "action", number, "contain", "--host=plugin-01")
        facts = json.loads(admin(server, "facts").stdout)
    catalogs = load_catalogs()
    checks = load_checks(catalogs)
    now = datetime.datetime.now(datetime.UTC)
    hosts = [
        {"host": "core-01", "groups": ["core"], "error": None, "seconds": 1.2},
        {"host": "dmz-01", "groups": ["dmz"], "error": "unreachable: timeout"},
    ]
    daily = load_checklist("daily", catalogs, checks)
    items = run_items(daily, [], tmp_path / "attestations")
    data = RunData(
        hosts,
        {"core-01": facts},
        RESULTS,
        [i.as_dict() for i in items],
        {c.id: c for c in checks},
        now,
    )
    sections = {s.title: s for s in build_sections(daily.report_sections, data)}
    assert list(sections) == [
        "Incidents (last 24 hours)",
        "Alert statistics (last 24 hours)",
        "System state",
        "Response status (last 24 hours)",
    ]
    incidents = sections["Incidents (last 24 hours)"].rows
    assert [r[2:4] for r in incidents] == [
        ["emergency.shutdown", "securecore"],
        ["incident.open", number],
    ]
    # The incident records themselves: open, their phase, deadline and contained hosts.
    assert sections["Incidents (last 24 hours)"].note.startswith(
        f"Open incidents: {number} (high, beaconing): containment, respond by "
    )
    assert (
        "contained: plugin-01. Closed in the period: none."
        in sections["Incidents (last 24 hours)"].note
    )
    responses = [r[2:4] for r in sections["Response status (last 24 hours)"].rows]
    assert responses == [
        ["emergency.recover", "securecore"],
        ["acl.block", "127.0.0.9"],
        ["incident.action", number],
    ]
    statistics = {
        (r[1], r[2]): int(r[3]) for r in sections["Alert statistics (last 24 hours)"].rows
    }
    assert statistics["auth.failure", "failure"] >= 1 and statistics["acl.block", "success"] == 1
    assert "1 high" in sections["Alert statistics (last 24 hours)"].note
    state = {r[0]: r for r in sections["System state"].rows}
    assert state["core-01"][2] == "ready" and state["dmz-01"][1] == "error: unreachable: timeout"
    # Markdown and HTML carry the sections; the reason of the shutdown (a detail) does not.
    text = markdown(daily, items, hosts, now, list(sections.values()), RESULTS)
    page = render(daily.title, {}, hosts, RESULTS, data.items, list(sections.values()))
    for rendered in (text, page):
        assert "Incidents (last 24 hours)" in rendered and "emergency.shutdown" in rendered
        assert "plugin zone compromised" not in rendered
    # Both say why each check exists, its requirement ids first.
    why = text.split("## Why these checks", 1)[1]
    assert "| patches.security_updates | REQ-HARD-12 - patch deadlines" in why
    assert "| service.ready | REQ-COMP-8 - system operation status. |" in why
    assert '<span class="rationale">REQ-HARD-12 - patch deadlines' in page
    # The weekly report: its improvements come from the failed checks' remediation.
    weekly = load_checklist("weekly", catalogs, checks)
    weekly_sections = {s.title: s for s in build_sections(weekly.report_sections, data)}
    [plan] = weekly_sections["Improvements"].rows
    assert plan[:3] == ["high", "patches.security_updates", "core-01"] and plan[3]
    assert [r[1] for r in weekly_sections["Vulnerabilities"].rows] == ["patches.security_updates"]


def test_a_section_with_nothing_to_show_says_so(tmp_path: Path) -> None:
    catalogs = load_catalogs()
    checks = load_checks(catalogs)
    monthly = load_checklist("monthly", catalogs, checks)
    data = RunData([], {}, [], [], {c.id: c for c in checks}, datetime.datetime.now(datetime.UTC))
    sections = build_sections(monthly.report_sections, data)
    text = "\n".join(line for s in sections for line in [s.title, s.empty])
    assert "nothing failed: no improvement is due from the checks" in text
    assert "no failed or waived check" in text
