"""Incident records on a running service: every change audited, closing only when verified.

`securecore incident` against the development server (the admin certificate);
evidence bundles are real signed compliance bundles, checked by the command
before they are linked.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from compliance.evidence import generate_key, load_signing_key, write_bundle
from tests.support.devserver import admin, call, dev_server, scrape


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with dev_server(tmp_path_factory.mktemp("incidents") / "dev") as running:
        yield running


@pytest.fixture(scope="module")
def evidence(tmp_path_factory) -> dict[str, Path]:
    """Two passing runs and a failing one, as compliance bundles signed with the evidence
    key (each stage is verified by a run of its own)."""
    root = tmp_path_factory.mktemp("evidence")
    generate_key(root / "evidence.key")
    key = load_signing_key(root / "evidence.key")
    made = {}
    for name, status in (("pass", "pass"), ("pass again", "pass"), ("fail", "fail")):
        result = {
            "check": "ssh.keys_only",
            "host": "plugin-01",
            "status": status,
            "detail": "-",
            "severity": "high",
            "controls": {},
            "waiver": None,
        }
        made[name] = write_bundle(
            root / name, "incident", [result], [{"host": "plugin-01"}], {"plugin-01": {}}, {}, key
        )
    made["key"] = root / "evidence.key.pub"
    return made


def incident(server, *args: str, check: bool = True):
    return admin(server, "incident", *args, check=check)


def opened(server, severity: str = "high") -> dict:
    return json.loads(
        incident(
            server,
            "open",
            "--title",
            "plugin-01 beacons out",
            "--severity",
            severity,
            "--impact",
            "compromise",
            "--source",
            "monitoring",
        ).stdout
    )


def verified(server, number: str, stage: str, bundle: Path, key: Path, check: bool = True):
    """A passed verification of STAGE resting on BUNDLE."""
    method = {"eradication": "audit", "recovery": "security"}[stage]
    options = ["--stage", stage, "--method", method, "--summary", "compliance checks", "--passed"]
    options += ["--bundle", str(bundle), "--trusted-key", str(key)]
    return incident(server, "verify", number, *options, check=check)


def audit_records(server, incident_id: str) -> dict[int, dict]:
    """The audit log's records about INCIDENT_ID, by sequence number."""
    lines = [json.loads(line) for line in admin(server, "audit", "export").stdout.splitlines()]
    return {
        line["seq"]: line["record"]
        for line in lines
        if line["type"] == "record" and line["record"]["target"] == incident_id
    }


def test_an_incident_is_numbered_escalated_by_severity_and_every_change_audited(server) -> None:
    record = opened(server, "critical")
    number = record["id"]
    assert number.startswith("INC-") and number.endswith("-0001")
    assert (record["phase"], record["escalation_level"], record["response_level"]) == (
        "detection",
        3,
        4,
    )
    assert record["channels"] == ["phone", "mail", "pager"]
    incident(server, "update", number, "--scope", "plugin-01", "--note", "seen by IDS")
    incident(server, "action", number, "contain", "--host", "plugin-01", "--summary", "drill")
    archive = hashlib.sha256(b"an archive").hexdigest()
    backup = ["--artifact-sha256", archive, "--artifact-name", "a.tar.gz", "--artifact-kind", "b"]
    incident(server, "action", number, "backup", "--host", "plugin-01", *backup)
    shown = json.loads(incident(server, "show", number).stdout)
    assert shown["phase"] == "containment" and shown["contained_hosts"] == ["plugin-01"]
    assert [e["kind"] for e in shown["timeline"]] == ["open", "update", "action", "action"]
    assert shown["artifacts"] == [
        {
            "action": "backup",
            "name": "a.tar.gz",
            "kind": "b",
            "sha256": archive,
            "hosts": ["plugin-01"],
            "time": shown["timeline"][3]["time"],
        }
    ]
    # Each timeline entry names its audit record, which holds the same change.
    audited = audit_records(server, number)
    for event in shown["timeline"]:
        record = audited[event["audit_sequence"]]
        assert record["action"] == f"incident.{event['kind']}"
        assert record["actor"] == event["actor"] == "admin/admin"
    assert audited[shown["timeline"][2]["audit_sequence"]]["details"]["hosts"] == ["plugin-01"]
    # Each open incident is a series the monitoring routes by escalation level.
    exported = [
        line
        for line in scrape(server)[1].splitlines()
        if line.startswith("securecore_incident_open{")
    ]
    assert any(
        f'incident="{number}"' in line
        and 'escalation_level="3"' in line
        and 'team="crisis"' in line
        and 'incident_severity="critical"' in line
        and line.endswith(" 1.0")
        for line in exported
    ), exported
    second = opened(server, "low")
    assert second["id"].endswith("-0002") and second["escalation_level"] == 1
    listed = json.loads(incident(server, "list").stdout)
    assert [i["id"] for i in listed][:2] == [second["id"], number]


def test_closing_needs_released_hosts_a_cause_and_verified_evidence(
    server, evidence, tmp_path
) -> None:
    number = opened(server)["id"]
    incident(server, "action", number, "contain", "--host", "plugin-01")
    refused = incident(server, "close", number, "--summary", "done", check=False)
    assert refused.returncode == 2
    for missing in (
        "hosts still contained: plugin-01",
        "no passed eradication verification with evidence attached",
        "no passed recovery verification with evidence attached",
        "no cause recorded",
    ):
        assert missing in refused.stderr
    # A failing bundle cannot back a passed verification; the command refuses it.
    failing = verified(server, number, "eradication", evidence["fail"], evidence["key"], False)
    assert failing.returncode == 2 and "1 checks failed in it" in failing.stderr
    for stage, bundle in (("eradication", "pass"), ("recovery", "pass again")):
        verified(server, number, stage, evidence[bundle], evidence["key"])
    incident(server, "action", number, "release", "--host", "plugin-01")
    early = incident(server, "report", number, "--out", str(tmp_path), check=False)
    assert (
        early.returncode == 2 and "not closed: a post-incident report is made once" in early.stderr
    )
    incident(server, "update", number, "--cause", "a leaked plugin key", "--fix", "key rotated")
    incident(server, "update", number, "--follow-up", "<script>alert(1)</script> | pin the key")
    closed = json.loads(incident(server, "close", number, "--summary", "plugin-01 rebuilt").stdout)
    assert closed["phase"] == "closed" and closed["closing"]["by"] == "admin/admin"
    manifests = {
        hashlib.sha256((evidence[b] / "manifest.json").read_bytes()).hexdigest()
        for b in ("pass", "pass again")
    }
    assert {v["artifact_sha256"] for v in closed["verifications"]} == manifests
    assert closed["verifications"][0]["checks_passed"] == 1
    assert f'incident="{number}"' not in scrape(server)[1]  # closed: no longer exported
    # The post-incident report: every part, in Markdown and HTML, the notes escaped.
    incident(server, "report", number, "--out", str(tmp_path / "report"))
    text = (tmp_path / "report" / f"{number}.md").read_text()
    page = (tmp_path / "report" / f"{number}.html").read_text()
    for part in ("Summary", "Timeline", "Scope", "Containment", "Backups and evidence"):
        assert f"## {part}" in text and f"<h2>{part}</h2>" in page
    for part in ("Cause", "Fixes", "Verification", "Follow-ups"):
        assert f"## {part}" in text and f"<h2>{part}</h2>" in page
    assert "| a leaked plugin key |" in text and "key rotated" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "\\| pin the key" in text  # a | in a note stays inside its cell
    assert text.count("| yes |") == 2 and manifests.pop() in text
    after = incident(server, "update", number, "--note", "late", check=False)
    assert after.returncode == 2 and f"409 conflict: {number} is closed" in after.stderr


def test_a_tampered_bundle_is_not_linked(server, evidence, tmp_path) -> None:
    number = opened(server)["id"]
    forged = shutil.copytree(evidence["fail"], tmp_path / evidence["fail"].name)
    results = json.loads((forged / "results.json").read_text())
    results["results"][0]["status"] = "pass"  # the failure edited away
    (forged / "results.json").write_text(json.dumps(results))
    refused = verified(server, number, "recovery", forged, evidence["key"], check=False)
    assert refused.returncode == 2 and "does not verify" in refused.stderr
    assert "results.json" in refused.stderr
    assert json.loads(incident(server, "show", number).stdout)["verifications"] == []


def test_bad_input_is_refused_with_what_and_where(server) -> None:
    wrong_id = incident(server, "show", "INC-26-1", check=False)
    assert "422" in wrong_id.stderr and "not an incident id (INC-YYYY-NNNN)" in wrong_id.stderr
    unknown = incident(server, "show", "INC-1999-0001", check=False)
    assert "404" in unknown.stderr and "no incident INC-1999-0001" in unknown.stderr
    number = opened(server)["id"]
    incident(server, "update", number, "--phase", "eradication")
    backwards = incident(server, "update", number, "--phase", "containment", check=False)
    assert "409" in backwards.stderr and "phases go forward only" in backwards.stderr
    bad_host = incident(server, "action", number, "contain", "--host=a b", check=False)
    assert "422" in bad_host.stderr and "hosts[0]: must match" in bad_host.stderr
    # "$" in a pattern ends the string: a trailing newline is no severity.
    status, refused = call(
        server,
        "POST",
        "/v1/admin/incidents",
        body={"title": "t", "severity": "high\n", "impact": "outage", "source": "monitoring"},
    )
    assert status == 422 and "severity: must match" in refused["error"]["message"]
    bad_hash = incident(server, "action", number, "backup", "--artifact-sha256=ABC", check=False)
    assert "422" in bad_hash.stderr and "artifact_sha256: must match" in bad_hash.stderr
    shown = json.loads(incident(server, "show", number).stdout)
    assert [e["kind"] for e in shown["timeline"]] == ["open", "update"]
