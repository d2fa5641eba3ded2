"""Checklist runs and attestations: a person's item is pending until attested in its
period, attested items carry who, when and the hashes of what was shown, and the run's
report goes into the signed bundle."""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

from compliance.attestations import current, load_attesters, record
from compliance.catalog import load_catalogs
from compliance.checklists import load_checklists
from compliance.checks import load_checks
from compliance.evidence import load_signing_key
from tests.support.commands import compliance
from tests.support.evidence import attesters


def test_attestations_record_who_when_and_what(tmp_path: Path) -> None:
    store = tmp_path / "attestations"
    shown = tmp_path / "alert-review.txt"
    shown.write_text("2 alerts, both false positives\n")
    pinned = load_attesters(attesters(tmp_path, "alice"))
    made = compliance(
        "attest",
        "daily.security_alerts",
        "--by",
        "alice",
        "--note",
        "reviewed",
        "--file",
        str(shown),
        "--store",
        str(store),
        "--key",
        str(tmp_path / "alice.key"),
    )
    assert made.returncode == 0, made.stderr
    [path] = store.iterdir()
    found, refused = current(store, "daily", "daily.security_alerts", attesters=pinned)
    assert refused == [] and found.key_id is not None
    data = json.loads(path.read_text())["record"]
    assert (data["item"], data["by"], data["note"]) == (
        "daily.security_alerts",
        "alice",
        "reviewed",
    )
    digest = hashlib.sha256(shown.read_bytes()).hexdigest()
    size = shown.stat().st_size
    assert data["files"] == [{"name": "alert-review.txt", "size": size, "sha256": digest}]
    someone = (
        "--by",
        "a",
        "--note",
        "b",
        "--store",
        str(store),
        "--key",
        str(tmp_path / "alice.key"),
    )
    machine = compliance("attest", "daily.backup", *someone)
    assert machine.returncode == 2 and "checked by the machine only" in machine.stderr
    unknown = compliance("attest", "daily.coffee", *someone)
    assert unknown.returncode == 2 and "no checklist item 'daily.coffee'" in unknown.stderr
    assert "daily.security_alerts" in unknown.stderr  # the attestable items are listed
    empty = compliance(
        "attest",
        "daily.security_alerts",
        "--by",
        " ",
        "--note",
        "x",
        "--store",
        str(store),
        "--key",
        str(tmp_path / "alice.key"),
    )
    assert empty.returncode == 2 and "--by and --note" in empty.stderr


def test_an_attestation_counts_for_its_period_only(tmp_path: Path) -> None:
    catalogs = load_catalogs()
    checklists = load_checklists(catalogs, load_checks(catalogs))
    store = tmp_path / "attestations"
    pinned = load_attesters(attesters(tmp_path, "bob"))
    bob = load_signing_key(tmp_path / "bob.key")
    now = datetime.datetime(2026, 11, 26, 12, tzinfo=datetime.UTC)
    record(
        store,
        checklists,
        "daily.security_alerts",
        "bob",
        "yesterday's review",
        [],
        bob,
        now=now - datetime.timedelta(days=1),
    )
    assert current(store, "daily", "daily.security_alerts", now, pinned) == (None, [])
    record(
        store,
        checklists,
        "weekly.incident_report",
        "bob",
        "week 48",
        [],
        bob,
        now=now - datetime.timedelta(days=2),  # Tuesday of the same ISO week
    )
    assert current(store, "weekly", "weekly.incident_report", now, pinned)[0].by == "bob"


def test_a_checklist_run_reports_attested_and_pending_items(inventory, tmp_path: Path) -> None:
    store = tmp_path / "attestations"
    pinned = attesters(tmp_path, "alice")
    compliance(
        "attest",
        "daily.security_alerts",
        "--by",
        "alice",
        "--note",
        "quiet night",
        "--store",
        str(store),
        "--key",
        str(tmp_path / "alice.key"),
    )
    key = tmp_path / "evidence.key"
    compliance("keygen", "--key", str(key))
    evidence = tmp_path / "evidence"
    run = compliance(
        "checklist",
        "run",
        "daily",
        "-i",
        str(inventory),
        "--store",
        str(store),
        "--format",
        "json",
        "--evidence",
        str(evidence),
        "--signing-key",
        str(key),
        "--attesters",
        str(pinned),
    )
    # No core host in this inventory: the service items cannot be checked - an error.
    assert run.returncode == 2, run.stderr
    items = {i["id"]: i for i in json.loads(run.stdout)}
    assert len(items) == 9
    assert items["daily.security_alerts"]["status"] == "pass"
    assert items["daily.security_alerts"]["attestation"]["by"] == "alice"
    assert items["daily.report_and_plan"]["status"] == "pending"
    assert items["daily.plugins"]["status"] == "error"
    assert "no host it applies to was checked" in items["daily.plugins"]["failing"][0]
    [made] = evidence.iterdir()
    report = (made / "report.md").read_text()
    assert "# Daily operations check - " in report and "attested by alice" in report
    assert "| daily.report_and_plan Daily report sent, next day planned | **pending**" in report
    assert json.loads((made / "checklist.json").read_text())[0]["id"] == "daily.system_status"
    page = (made / "report.html").read_text()
    assert "Daily operations check" in page and "quiet night" in page
    # A section per framework leads from each control to what the run found for it: its
    # status, the checks on each host, the attestations, the files that hold the facts.
    iso = report.split("## Controls: ISO/IEC 27001:2022 Annex A (iso27001-2022)\n", 1)[1]
    rows = {line.split(" | ")[0][2:]: line for line in iso.splitlines() if line.startswith("| A.")}
    attested = rows["A.5.25 Assessment and decision on information security events"]
    assert "| satisfied | " in attested and "daily.security_alerts: attested by alice" in attested
    assert attested.endswith("| checklist.json |")
    assert rows["A.5.37 Documented operating procedures"].startswith(
        "| A.5.37 Documented operating procedures | pending | "
    )
    tls = rows["A.8.24 Use of cryptography"]
    assert "tls.policy (here: " in tls and tls.endswith("| results.json, facts/here.json |")
    assert "Not judged by this run: " in iso and "## Controls: SOC 2" in report
    assert "<h2>Controls: ISO/IEC 27001:2022 Annex A (iso27001-2022)</h2>" in page
    assert "<td>A.8.24 Use of cryptography</td>" in page
    assert compliance("verify", str(evidence), "--trusted-key", f"{key}.pub").returncode == 0
