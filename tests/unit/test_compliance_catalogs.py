"""Control catalogs, check definitions, checklists, the rule language and coverage."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from compliance.catalog import CATALOG_DIR, CatalogError, load_catalog, load_catalogs
from compliance.checklists import CHECKLIST_DIR, load_checklist, load_checklists
from compliance.checks import CHECK_DIR, load_checks, requirement_ids
from compliance.coverage import APPLICABILITY_FILE, coverage, load_applicability
from compliance.rules import RuleError, evaluate, validate


@pytest.fixture(scope="module")
def catalogs():
    return load_catalogs()


@pytest.fixture(scope="module")
def checks(catalogs):
    return load_checks(catalogs)


def test_annex_a_has_its_93_controls_in_four_themes(catalogs) -> None:
    iso = catalogs["iso27001-2022"]
    wanted = [f"A.5.{i}" for i in range(1, 38)] + [f"A.6.{i}" for i in range(1, 9)]
    wanted += [f"A.7.{i}" for i in range(1, 15)] + [f"A.8.{i}" for i in range(1, 35)]
    assert iso.ids() == wanted
    assert Counter(c.theme for c in iso.controls) == {
        "organizational": 37,
        "people": 8,
        "physical": 14,
        "technological": 34,
    }
    assert iso.get("A.8.24").title == "Use of cryptography"


def test_the_soc2_criteria_are_complete(catalogs) -> None:
    soc2 = catalogs["soc2-tsc"]
    common = [i for i in soc2.ids() if i.startswith("CC")]
    assert len(common) == 33 and common[0] == "CC1.1" and common[-1] == "CC9.2"
    assert Counter(c.theme for c in soc2.controls) == {
        "security": 33,
        "availability": 3,
        "confidentiality": 2,
        "processing_integrity": 5,
        "privacy": 18,
    }


def test_a_catalog_that_lost_a_control_or_repeats_one_is_refused(tmp_path: Path) -> None:
    data = yaml.safe_load((CATALOG_DIR / "iso27001-2022.yaml").read_text())
    lost = {**data, "controls": data["controls"][:-1]}
    (tmp_path / "lost.yaml").write_text(yaml.safe_dump(lost))
    with pytest.raises(CatalogError, match=r"lost.yaml: 92 controls, but iso27001-2022 has 93"):
        load_catalog(tmp_path / "lost.yaml")
    twice = {**data, "controls": [*data["controls"][:-1], data["controls"][0]]}
    (tmp_path / "twice.yaml").write_text(yaml.safe_dump(twice))
    with pytest.raises(CatalogError, match=r"controls\[92\]: A.5.1 appears twice"):
        load_catalog(tmp_path / "twice.yaml")


FACTS = {
    "sshd": {
        "permitrootlogin": "no",
        "clientaliveinterval": 300,
        "ciphers": "aes256-gcm@openssh.com,chacha20-poly1305@openssh.com",
    },
    "auditd": {"rule_keys": ["identity", "logins", "time-change"]},
    "hardening": {"failed": []},
    "aide": {"database": None},
    "flag": True,
}


@pytest.mark.parametrize(
    ("rule", "passed"),
    [
        ({"fact": "sshd.permitrootlogin", "equals": "no"}, True),
        ({"fact": "sshd.permitrootlogin", "equals": "yes"}, False),
        ({"fact": "sshd.clientaliveinterval", "at_most": 300}, True),
        ({"fact": "sshd.clientaliveinterval", "below": 300}, False),
        ({"fact": "sshd.clientaliveinterval", "above": 0}, True),
        ({"fact": "sshd.clientaliveinterval", "at_least": 301}, False),
        (
            {
                "fact": "sshd.ciphers",
                "subset_of": ["aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"],
            },
            True,
        ),
        ({"fact": "sshd.ciphers", "subset_of": ["aes256-gcm@openssh.com"]}, False),
        ({"fact": "auditd.rule_keys", "includes": ["identity", "logins"]}, True),
        ({"fact": "auditd.rule_keys", "includes": ["identity", "session"]}, False),
        ({"fact": "sshd.ciphers", "contains": "aes256-gcm@openssh.com"}, True),
        ({"fact": "hardening.failed", "empty": True}, True),
        ({"fact": "sshd.permitrootlogin", "in": ["no", "prohibit-password"]}, True),
        ({"fact": "sshd.permitrootlogin", "matches": "^n"}, True),
        ({"fact": "sshd.banner", "exists": False}, True),
        ({"fact": "aide.database", "exists": True}, False),  # null: not found by the gatherer
        ({"fact": "aide.database", "exists": False}, True),
        ({"fact": "aide.database", "empty": True}, False),
        ({"fact": "sshd.banner", "equals": None}, False),  # absent is never a pass
        ({"fact": "flag", "at_most": 1}, False),  # a boolean is not a number
        (
            {"all": [{"fact": "flag", "equals": True}, {"fact": "sshd.banner", "exists": True}]},
            False,
        ),
        ({"any": [{"fact": "flag", "equals": False}, {"fact": "flag", "equals": True}]}, True),
        ({"not": {"fact": "flag", "equals": True}}, False),
    ],
)
def test_rules(rule, passed) -> None:
    validate(rule, "test")
    outcome = evaluate(rule, FACTS)
    assert outcome.passed is passed, outcome.detail


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"fact": "a.b", "equal": 1}, "one test of"),
        ({"fact": "a.b", "equals": 1, "in": [1]}, "one test of"),
        ({"equals": 1}, "fact: the dotted path"),
        ({"fact": "a", "at_most": "5"}, "at_most takes a number"),
        ({"fact": "a", "in": "x"}, "in takes a list"),
        ({"fact": "a", "matches": "("}, "matches:"),
        ({"all": []}, "all: a non-empty list"),
        ({"all": [{"fact": "a", "exists": "yes"}]}, r"all\[0\]: exists takes true or false"),
    ],
)
def test_malformed_rules_are_named(rule, message) -> None:
    with pytest.raises(RuleError, match=message):
        validate(rule, "checks/x.yaml (some.check): rule")


def test_the_shipped_checks_load_with_their_facts(checks) -> None:
    by_id = {c.id: c for c in checks}
    assert by_id["ssh.root_login_disabled"].facts == ("sshd.permitrootlogin",)
    assert {c.scope for c in checks} == {"host", "service"}
    assert by_id["tls.policy"].controls["iso27001-2022"][0] == "A.8.24"


@pytest.mark.parametrize(
    ("rationale", "ids"),
    [
        ("REQ-AUDIT-5 - audit log integrity.", ("REQ-AUDIT-5",)),
        ("REQ-SVC-12, REQ-SVC-13 - keys rotate.", ("REQ-SVC-12", "REQ-SVC-13")),
        ("REQ-HARD-13 (patch management); ISO 27001 A.8.19", ("REQ-HARD-13",)),
        ("REQ-NET-2 and REQ-NET-6: zones", ("REQ-NET-2", "REQ-NET-6")),
        ("see REQ-NET-2", ()),  # an id later in the text is context, not what it verifies
        ("REQ-NET-2 - unlike REQ-NET-6", ("REQ-NET-2",)),
    ],
)
def test_the_requirement_ids_a_rationale_begins_with(rationale, ids) -> None:
    assert requirement_ids(rationale) == ids


def test_every_check_says_which_requirements_it_verifies(checks) -> None:
    # Each id being defined in docs/requirements.md is test_requirements_doc's concern
    # (every id cited anywhere is); here: the rationale opens with them, so the
    # reports can carry them as data.
    assert [c.id for c in checks if not c.requirements] == []
    assert {c.id: c.requirements for c in checks}["service.key_ages"] == (
        "REQ-SVC-12",
        "REQ-SVC-13",
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"controls": {"iso27001-2022": ["A.9.9"]}},
            r"\(ssh.root_login_disabled\): "
            r"iso27001-2022 has no control A.9.9",
        ),
        ({"severity": "urgent"}, "severity 'urgent'"),
        ({"rule": {"fact": "x", "greater": 1}}, r"\(ssh.root_login_disabled\): rule: one test"),
        ({"controls": {"nist": ["AC-1"]}}, "no framework 'nist'"),
        ({"not_applicble": {}}, r"\(ssh.root_login_disabled\): unknown keys not_applicble"),
        (
            {"not_applicable": {"when": {"fact": "system.container", "equals": True}}},
            r"\(ssh.root_login_disabled\): not_applicable: reason: why",
        ),
        (
            {"not_applicable": {"when": {"fact": "x", "is": 1}, "reason": "r"}},
            r"\(ssh.root_login_disabled\): not_applicable.when: one test",
        ),
        (
            {"not_applicable": {"reason": "r"}},
            r"\(ssh.root_login_disabled\): not_applicable: when: the rule",
        ),
        (
            {"not_applicable": {"when": {"fact": "x", "equals": 1}, "reason": "r", "until": 1}},
            r"\(ssh.root_login_disabled\): not_applicable: unknown keys until",
        ),
        ({"not_applicable": "containers"}, r"not_applicable: a mapping with when"),
    ],
)
def test_a_broken_check_is_named_with_its_file(tmp_path, catalogs, change, message) -> None:
    shutil.copytree(CHECK_DIR, tmp_path / "checks")
    path = tmp_path / "checks" / "host.yaml"
    data = yaml.safe_load(path.read_text())
    data[0].update(change)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CatalogError, match=message) as raised:
        load_checks(catalogs, tmp_path / "checks")
    assert "host.yaml: [0]" in str(raised.value)


def test_each_checklist_has_its_seven_required_items(catalogs, checks) -> None:
    checklists = load_checklists(catalogs, checks)
    for name, section in (
        ("daily", "REQ-COMP-8"),
        ("weekly", "REQ-COMP-9"),
        ("monthly", "REQ-COMP-10"),
    ):
        items = checklists[name].items
        assert sum(section in item.source for item in items) == 7, name
        assert all(item.checks or item.attested_controls for item in items)
    assert checklists["daily"].schedule == "*-*-* 09:00:00 UTC"
    assert checklists["monthly"].report_sections[2] == "compliance status"
    people_only = next(i for i in checklists["daily"].items if i.id == "daily.security_alerts")
    assert not people_only.checks and people_only.attested_controls


def test_a_checklist_naming_an_unknown_check_is_refused(tmp_path, catalogs, checks) -> None:
    shutil.copytree(CHECKLIST_DIR, tmp_path / "lists")
    path = tmp_path / "lists" / "daily.yaml"
    path.write_text(path.read_text().replace("service.ready,", "service.raedy,"))
    with pytest.raises(
        CatalogError,
        match=r"daily.yaml: items\[0\] \(daily.system_status\): "
        r"no check service.raedy",
    ):
        load_checklist("daily", catalogs, checks, tmp_path / "lists")
    with pytest.raises(CatalogError, match="no checklist 'yearly'"):
        load_checklist("yearly", catalogs, checks)


def test_every_control_is_covered_or_not_applicable_with_a_reason(catalogs, checks) -> None:
    table = coverage(
        catalogs, checks, load_checklists(catalogs, checks), load_applicability(catalogs)
    )
    gaps = [e.id for entries in table.values() for e in entries if e.status == "gap"]
    assert gaps == []
    iso = {e.id: e for e in table["iso27001-2022"]}
    assert "ssh.root_login_disabled" in iso["A.8.2"].checks
    assert iso["A.6.3"].status == "attested"
    assert iso["A.8.23"].status == "not applicable" and "egress" in iso["A.8.23"].not_applicable


def test_a_control_left_uncovered_is_a_gap_and_the_cli_says_so(tmp_path, catalogs) -> None:
    # A catalog with one control more than anything covers.
    shutil.copytree(CATALOG_DIR, tmp_path / "catalogs")
    path = tmp_path / "catalogs" / "iso27001-2022.yaml"
    data = yaml.safe_load(path.read_text())
    data["controls"].append(
        {"id": "A.8.35", "title": "A control nobody covers", "theme": "technological"}
    )
    data["expected_controls"] = 94
    path.write_text(yaml.safe_dump(data))
    widened = load_catalogs(tmp_path / "catalogs")
    checks = load_checks(widened)
    table = coverage(widened, checks, load_checklists(widened, checks), load_applicability(widened))
    assert [e.id for e in table["iso27001-2022"] if e.status == "gap"] == ["A.8.35"]


def test_not_applicable_and_covered_at_once_is_a_contradiction(tmp_path, catalogs, checks) -> None:
    statement = yaml.safe_load(APPLICABILITY_FILE.read_text())
    statement["iso27001-2022"]["A.8.2"] = "we have no privileged access"
    (tmp_path / "soa.yaml").write_text(yaml.safe_dump(statement))
    with pytest.raises(CatalogError, match=r"A\.8\.2 is marked not applicable but covered by"):
        coverage(
            catalogs,
            checks,
            load_checklists(catalogs, checks),
            load_applicability(catalogs, tmp_path / "soa.yaml"),
        )
    statement["iso27001-2022"]["A.8.2"] = " "
    (tmp_path / "soa.yaml").write_text(yaml.safe_dump(statement))
    with pytest.raises(CatalogError, match=r"A\.8\.2: the reason is required"):
        load_applicability(catalogs, tmp_path / "soa.yaml")


def compliance_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compliance.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli() -> None:
    covered = compliance_cli("coverage")
    assert covered.returncode == 0, covered.stderr
    assert "ISO/IEC 27001:2022 Annex A: 93 controls" in covered.stdout
    assert "A.8.24   automated" in covered.stdout
    assert compliance_cli("coverage", "--gaps", "--framework", "soc2-tsc").returncode == 0
    unknown = compliance_cli("coverage", "--framework", "nist")
    assert unknown.returncode == 2 and "--framework nist: one of" in unknown.stderr
    assert compliance_cli().returncode == 2
    assert compliance_cli("checklists", "yearly").returncode == 2
    assert "daily.audit_log" in compliance_cli("checklists", "daily").stdout
