"""A check that does not apply to a host (REQ-COMP-17): decided from the host's own
facts by the check's `not_applicable` rule, shown with its reason in every report, and
never hiding a failure of another host or check."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from trestle.oscal.assessment_results import Model

from compliance.catalog import load_catalogs
from compliance.checklist_run import markdown, run_items
from compliance.checklists import Checklist, Item
from compliance.checks import load_checks
from compliance.engine import Result, Waiver, run_checks
from compliance.evidence import junit
from compliance.gather.runner import HostFacts
from compliance.html_report import render
from compliance.oscal import assessment_results
from compliance.report_sections import RunData, compliance_status, security_posture

NOW = datetime.datetime(2026, 12, 5, 9, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def checks():
    return {c.id: c for c in load_checks(load_catalogs())}


def host(name: str, container: bool | None, synchronized: bool) -> HostFacts:
    facts: dict = {"time": {"synchronized": synchronized}}
    if container is not None:
        facts["system"] = {"container": container, "container_type": "podman"}
    return HostFacts(name, ["core"], facts)


def results_of(checks, *hosts: HostFacts):
    return run_checks([checks["time.synchronized"]], list(hosts), [])


def test_the_clock_check_does_not_apply_in_a_container_and_says_why(checks) -> None:
    [inside, machine, unknown, gone] = results_of(
        checks,
        host("lab", True, False),
        host("metal", False, False),
        host("unread", None, False),  # the gatherer could not tell: checked as usual
        HostFacts("gone", ["core"], error="unreachable: timeout"),
    )
    assert inside.status == "not_applicable"
    assert inside.detail.startswith("not applicable: In a container the clock is the container")
    # The facts that decided it, and what the check itself found, are in the detail.
    assert "system.container = True" in inside.detail
    assert "found: time.synchronized = False" in inside.detail
    assert inside.requirements == ["REQ-HARD-10"]
    assert (machine.status, unknown.status, gone.status) == ("fail", "fail", "error")


def test_a_waiver_is_not_needed_and_not_used_for_what_does_not_apply(checks) -> None:
    waiver = Waiver("time.synchronized", ("all",), "r", "ciso", datetime.date(2030, 1, 1))
    [inside, machine] = run_checks(
        [checks["time.synchronized"]],
        [host("lab", True, False), host("metal", False, False)],
        [waiver],
    )
    assert inside.status == "not_applicable" and inside.waiver is None
    assert machine.status == "waived"


def checklist() -> Checklist:
    return Checklist(
        "daily",
        "Daily",
        "*-*-* 09:00:00 UTC",
        (),
        (
            Item("clock", "Clock", "REQ-COMP-8", ("time.synchronized",), None),
            Item("both", "Clock and more", "REQ-COMP-8", ("time.synchronized", "x.other"), None),
        ),
    )


def item_statuses(checks, tmp_path: Path, *hosts: HostFacts, other: str = "pass") -> dict:
    results = results_of(checks, *hosts)
    results.append(Result("x.other", "lab", other, "found", "low", {}))
    items = run_items(checklist(), results, tmp_path, NOW)
    return {i.id: i for i in items}


def test_an_item_is_done_when_its_checks_pass_or_do_not_apply(checks, tmp_path) -> None:
    items = item_statuses(checks, tmp_path, host("lab", True, False), host("lab2", True, True))
    # Nothing of the item applied anywhere: not applicable, not passed.
    assert items["clock"].status == "not_applicable"
    assert items["both"].status == "pass"
    assert items["both"].checks["time.synchronized"] == {"not_applicable": 2}
    assert items["both"].failing == []
    assert items["both"].not_applicable[0].startswith("time.synchronized on lab: not applicable:")


def test_not_applicable_never_hides_a_failure_of_another_host_or_check(checks, tmp_path) -> None:
    items = item_statuses(checks, tmp_path, host("lab", True, False), host("metal", False, False))
    assert items["clock"].status == "fail"
    assert items["clock"].failing == [
        "time.synchronized on metal: time.synchronized = False (equals True)"
    ]
    items = item_statuses(checks, tmp_path, host("lab", True, False), other="fail")
    assert items["both"].status == "fail"


def test_the_reports_show_it_and_count_it_apart(checks, tmp_path) -> None:
    results = results_of(checks, host("lab", True, False), host("metal", False, True))
    items = run_items(
        checklist(), [*results, Result("x.other", "lab", "pass", "", "low", {})], tmp_path, NOW
    )
    hosts = [{"host": h, "groups": ["core"], "error": None, "seconds": 1} for h in ("lab", "metal")]
    text = markdown(checklist(), items, hosts, NOW, [], [r.as_dict() for r in results])
    assert "Summary: 2 pass" in text
    assert "## Not applicable (why)" in text
    assert "- clock: time.synchronized on lab: not applicable: In a container" in text
    page = render("Daily", {}, hosts, [r.as_dict() for r in results])
    assert "Summary: <strong>1 pass, 1 not_applicable</strong>" in page
    assert '<span class="status not_applicable">not_applicable</span>' in page
    # Listed after what passed: the worst first.
    assert page.index("status pass") < page.index("status not_applicable")
    data = RunData(hosts, {}, [r.as_dict() for r in results], [], checks, NOW)
    assert security_posture(data).note.endswith("Checks passed: 1 of 1 (1 not applicable).")
    status = compliance_status(data)
    assert status.columns[-1] == "not applicable"
    # A.8.17 (the clock): passed on metal, not applicable on lab: satisfied.
    assert ["iso27001-2022", "1", "1", "0", "0"] in status.rows
    only_lab = RunData(hosts, {}, [results[0].as_dict()], [], checks, NOW)
    assert ["iso27001-2022", "1", "0", "0", "1"] in compliance_status(only_lab).rows
    xml = junit([r.as_dict() for r in results], "daily").decode()
    assert '<skipped message="not applicable: In a container' in xml
    assert 'failures="0"' in xml


def oscal(results) -> dict:
    hosts = [{"host": r.host, "groups": ["core"], "error": None} for r in results]
    document = assessment_results("Daily", {"started": NOW}, hosts, [r.as_dict() for r in results])
    Model.parse_obj(document)  # valid OSCAL 1.1 (compliance-trestle's strict model)
    [result] = document["assessment-results"]["results"]
    return result


def test_oscal_says_not_applicable_its_own_way(checks) -> None:
    result = oscal(results_of(checks, host("lab", True, False), host("lab2", True, False)))
    finding = next(f for f in result["findings"] if f["target"]["target-id"] == "A.8.17_obj")
    assert finding["target"]["implementation-status"]["state"] == "not-applicable"
    assert "In a container" in finding["target"]["implementation-status"]["remarks"]
    # Nothing left to satisfy, never a pass.
    assert finding["target"]["status"] == {"state": "satisfied", "reason": "other"}
    observation = result["observations"][0]
    assert {"name": "status", "ns": observation["props"][1]["ns"], "value": "not_applicable"} in (
        observation["props"]
    )
    assert observation["remarks"].startswith("not applicable: In a container")
    # Beside a host where it applies, that host decides.
    result = oscal(results_of(checks, host("lab", True, False), host("metal", False, False)))
    finding = next(f for f in result["findings"] if f["target"]["target-id"] == "A.8.17_obj")
    assert finding["target"]["status"] == {"state": "not-satisfied", "reason": "fail"}
    assert "implementation-status" not in finding["target"]
    result = oscal(results_of(checks, host("lab", True, False), host("metal", False, True)))
    finding = next(f for f in result["findings"] if f["target"]["target-id"] == "A.8.17_obj")
    assert finding["target"]["status"] == {"state": "satisfied", "reason": "pass"}
