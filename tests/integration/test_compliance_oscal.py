"""The bundle's assessment-results.json against the OSCAL 1.1 schema.

The validator (tests.support.oscal) is compliance-trestle's model of OSCAL 1.1.3,
generated from NIST's JSON schema: strict - unknown fields, wrong enumerations,
missing required fields and malformed UUIDs and dates are all refused, as the last
test shows. The period bundle's assessment results are validated with it too
(tests/integration/test_compliance_period.py).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from pydantic.v1 import ValidationError
from trestle.oscal import OSCAL_VERSION

from compliance.catalog import load_catalogs
from compliance.checks import load_checks
from compliance.oscal import NS
from tests.support.commands import compliance
from tests.support.evidence import attesters
from tests.support.oscal import validated


@pytest.fixture
def checklist_bundle(inventory, tmp_path: Path) -> Path:
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
        "--evidence",
        str(evidence),
        "--signing-key",
        str(key),
        "--attesters",
        str(pinned),
    )
    assert run.returncode == 2, run.stderr  # no core host here: the service items are errors
    [bundle] = evidence.iterdir()
    return bundle


def test_a_check_run_is_valid_oscal_assessment_results(inventory, tmp_path: Path) -> None:
    key = tmp_path / "evidence.key"
    compliance("keygen", "--key", str(key))
    run = compliance(
        "check",
        "-i",
        str(inventory),
        "--evidence",
        str(tmp_path / "evidence"),
        "--signing-key",
        str(key),
    )
    assert run.returncode == 1, run.stderr
    [bundle] = (tmp_path / "evidence").iterdir()
    document = json.loads((bundle / "assessment-results.json").read_text())
    model = validated(document)
    assert OSCAL_VERSION.startswith("1.1.")
    assert model.assessment_results.metadata.oscal_version.__root__ == "1.1.3"
    results = json.loads((bundle / "results.json").read_text())["results"]
    [result] = document["assessment-results"]["results"]
    # One observation per check and host, its evidence a file of the same bundle.
    assert len(result["observations"]) == len(results)
    for observation in result["observations"]:
        for evidence in observation["relevant-evidence"]:
            assert (bundle / evidence["href"]).is_file()
    # A control is satisfied only when everything that supports it passed.
    states = {r["check"]: r["status"] for r in results}
    failing = {
        c for r in results if r["status"] == "fail" for ids in r["controls"].values() for c in ids
    }
    findings = {
        f["target"]["target-id"]: f["target"]["status"]["state"] for f in result["findings"]
    }
    assert "fail" in states.values() and failing
    assert all(findings[f"{c}_obj"] == "not-satisfied" for c in failing)
    assert "satisfied" in findings.values()
    reviewed = {
        s["control-id"]
        for sel in result["reviewed-controls"]["control-selections"]
        for s in sel["include-controls"]
    }
    assert reviewed == {t.removesuffix("_obj") for t in findings}
    # Each result says why its check exists (results.json: the rationale and the ids it
    # opens with), and so does its observation: the rationale in its description, each
    # id a prop; a finding names the requirements of the checks behind its control.
    checks = {c.id: c for c in load_checks(load_catalogs())}
    for r in results:
        assert r["rationale"] == checks[r["check"]].rationale.strip()
        assert r["requirements"] == list(checks[r["check"]].requirements) != []
    ns = {p["ns"] for o in result["observations"] for p in o["props"]}
    for observation, r in zip(result["observations"], results, strict=True):
        assert observation["title"] == f"{r['check']} on {r['host']}"
        assert observation["description"].endswith(f"Why this check: {r['rationale']}")
        named = [p["value"] for p in observation["props"] if p["name"] == "requirement"]
        assert named == r["requirements"]
    assert ns == {NS}
    tls = next(r for r in results if r["check"] == "tls.policy")
    finding = next(f for f in result["findings"] if f["target"]["target-id"] == "A.8.24_obj")
    assert set(tls["requirements"]) <= {
        p["value"] for p in finding["props"] if p["name"] == "requirement"
    }
    # A run over every host, without waivers, says so in words.
    props = {p["name"]: p["value"] for p in document["assessment-results"]["metadata"]["props"]}
    assert props["limit"] == "all hosts"
    [plan] = document["assessment-results"]["back-matter"]["resources"]
    assert {"name": "waivers-sha256", "ns": NS, "value": "no waivers"} in plan["props"]
    # The manifest covers the OSCAL file like every other file.
    assert "assessment-results.json" in json.loads((bundle / "manifest.json").read_text())["files"]


def test_a_checklist_run_shows_attestations_and_never_passes_a_pending_one(
    checklist_bundle: Path,
) -> None:
    document = json.loads((checklist_bundle / "assessment-results.json").read_text())
    validated(document)
    [result] = document["assessment-results"]["results"]
    examined = {
        o["title"].split(":")[0]: o for o in result["observations"] if o["methods"] == ["EXAMINE"]
    }
    assert "attested by alice" in examined["daily.security_alerts"]["description"]
    assert "pending" in examined["daily.report_and_plan"]["description"]
    findings = {f["target"]["target-id"]: f for f in result["findings"]}
    # daily.report_and_plan (pending) supports A.5.37: not satisfied, reason other.
    assert findings["A.5.37_obj"]["target"]["status"] == {
        "state": "not-satisfied",
        "reason": "other",
    }
    public = checklist_bundle.parent.parent / "evidence.key.pub"
    assert (
        compliance("verify", str(checklist_bundle.parent), "--trusted-key", str(public)).returncode
        == 0
    )


def test_the_validator_refuses_what_the_schema_forbids(checklist_bundle: Path) -> None:
    document = json.loads((checklist_bundle / "assessment-results.json").read_text())
    result = document["assessment-results"]["results"][0]
    broken = []
    for change in (
        lambda r: r.pop("reviewed-controls"),
        lambda r: r["findings"][0]["target"]["status"].update(state="passed"),
        lambda r: r["observations"][0].update(uuid="not-a-uuid"),
        lambda r: r["observations"][0].update(collected="yesterday"),
        lambda r: r["observations"][0].update(verdict="fine"),
    ):
        copied = copy.deepcopy(document)
        change(copied["assessment-results"]["results"][0])
        with pytest.raises(ValidationError):
            validated(copied)
        broken.append(copied)
    assert result == document["assessment-results"]["results"][0]
    assert len(broken) == 5
