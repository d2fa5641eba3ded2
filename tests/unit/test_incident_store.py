"""The incident store on a real SQLite state database: no change without its audit record."""

from __future__ import annotations

import re

import pytest

from securecore.incidents.store import IncidentError, IncidentStore
from securecore.storage.state_db import StateDatabase

FIELDS = {"title": "t", "severity": "medium", "impact": "outage", "source": "user_report"}


class AuditLog:
    """Sequence numbers as the audit log hands them out; fails when told to."""

    def __init__(self) -> None:
        self.records: list[tuple] = []
        self.failing = False

    def __call__(self, actor, action, target, outcome, details) -> int:
        if self.failing:
            raise OSError("the audit store's disk failed")
        self.records.append((actor, action, target, outcome, details))
        return len(self.records)


@pytest.fixture
def store(tmp_path) -> tuple[IncidentStore, AuditLog]:
    audit = AuditLog()
    clock = iter(float(1_790_000_000 + i) for i in range(1000))
    return IncidentStore(
        StateDatabase.sqlite(tmp_path / "incidents.db"), audit, clock.__next__
    ), audit


def test_a_change_whose_audit_record_fails_is_not_made(store) -> None:
    incidents, audit = store
    number = incidents.open("admin/a", FIELDS)["id"]
    audit.failing = True
    with pytest.raises(OSError):
        incidents.update(number, "admin/a", {"phase": "containment"})
    with pytest.raises(OSError):
        incidents.open("admin/a", FIELDS)
    audit.failing = False
    record = incidents.get(number)
    assert record["phase"] == "detection" and len(record["timeline"]) == 1
    # The failed open took no number: the next one is the second.
    assert incidents.open("admin/a", FIELDS)["id"].endswith("-0002")
    assert [r[1] for r in audit.records] == ["incident.open", "incident.open"]


def test_the_response_follows_the_severity(store) -> None:
    incidents, _ = store
    record = incidents.open("admin/a", FIELDS)
    assert (record["response_level"], record["escalation_level"], record["team"]) == (
        2,
        1,
        "operations",
    )
    assert record["respond_by"] == "2026-09-21T18:13:20Z"  # 4 hours after opening
    raised = incidents.update(record["id"], "admin/a", {"severity": "critical"})
    assert (raised["escalation_level"], raised["respond_by"]) == (3, "2026-09-21T14:28:20Z")


def test_a_closed_incident_takes_no_change(store) -> None:
    incidents, _ = store
    number = incidents.open("admin/a", FIELDS)["id"]
    evidence = {"summary": "s", "passed": True, "checks_passed": 3, "checks_failed": 0}
    for stage, method, digest in (("eradication", "audit", "a"), ("recovery", "security", "b")):
        done = {**evidence, "stage": stage, "method": method, "artifact_sha256": digest * 64}
        incidents.record_verification(number, "admin/a", done)
    incidents.update(number, "admin/a", {"cause": "weak key"})
    incidents.close(number, "admin/a", {"summary": "done"})
    for change in (
        lambda: incidents.update(number, "admin/a", {"note": "x"}),
        lambda: incidents.record_action(number, "admin/a", {"action": "contain"}),
        lambda: incidents.close(number, "admin/a", {"summary": "again"}),
    ):
        with pytest.raises(IncidentError, match="is closed"):
            change()


def test_a_passed_verification_rests_on_its_own_clean_run_of_checks(store) -> None:
    incidents, _ = store
    number = incidents.open("admin/a", FIELDS)["id"]
    run = {"summary": "s", "passed": True, "artifact_sha256": "c" * 64, "checks_passed": 4}
    refused = {
        "recovery is verified by function, performance, security, not audit": {
            **run,
            "stage": "recovery",
            "method": "audit",
        },
        "a passed verification rests on evidence": {
            "summary": "s",
            "passed": True,
            "stage": "eradication",
            "method": "test",
        },
        "(passed 4, failed 1)": {
            **run,
            "stage": "eradication",
            "method": "test",
            "checks_failed": 1,
        },
        "(passed 0, failed 0)": {
            **run,
            "stage": "eradication",
            "method": "test",
            "checks_passed": 0,
        },
    }
    for said, verification in refused.items():
        with pytest.raises(IncidentError, match=re.escape(said)):
            incidents.record_verification(number, "admin/a", verification)
    incidents.record_verification(
        number, "admin/a", {**run, "stage": "eradication", "method": "test"}
    )
    with pytest.raises(IncidentError, match="needs a run of its own"):
        incidents.record_verification(
            number, "admin/a", {**run, "stage": "recovery", "method": "function"}
        )
    # A failed verification is recorded as what it is, with or without evidence.
    failed = {
        "summary": "latency high",
        "passed": False,
        "stage": "recovery",
        "method": "performance",
    }
    incidents.record_verification(number, "admin/a", failed)
    assert len(incidents.get(number)["verifications"]) == 2
