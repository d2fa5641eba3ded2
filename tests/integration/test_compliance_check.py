"""`compliance check` for real: ansible-runner gathers from this machine (a local
connection) and from a host that cannot be reached; waivers; the fact script
reading files given to it."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compliance.catalog import load_catalogs
from compliance.checklists import load_checklist
from compliance.checks import load_checks
from compliance.gather.host_facts import dr_drills
from compliance.rules import evaluate
from securecore_lab.devsetup import development_ca, issue_development_leaf
from tests.support.commands import ROOT, compliance

SCRIPT = ROOT / "compliance" / "gather" / "host_facts.py"


def test_this_machine_is_gathered_and_checked(inventory: Path, tmp_path: Path) -> None:
    facts_file = tmp_path / "facts.json"
    proc = compliance("check", "-i", str(inventory), "--format", "json", "--facts", str(facts_file))
    assert proc.returncode in (0, 1), proc.stderr
    document = json.loads(proc.stdout)
    assert "[1/1] here gathered" in proc.stderr  # progress, on stderr
    [host] = document["hosts"]
    assert host["host"] == "here" and host["error"] is None
    results = {r["check"]: r for r in document["results"]}
    assert len(results) == 19
    facts = json.loads(facts_file.read_text())["here"]
    # Only the clock check knows when it does not apply, and only in a container.
    unapplied = {c for c, r in results.items() if r["status"] == "not_applicable"}
    assert unapplied == ({"time.synchronized"} if facts["system"]["container"] else set())
    assert {r["status"] for c, r in results.items() if c not in unapplied} <= {"pass", "fail"}
    # Not in any segment of an inventory: the segregation check cannot pass.
    assert results["network.in_its_segment"]["status"] == "fail"
    assert facts["network"]["addresses"]  # gathered for real
    # A fact that could not be read fails its check and says why.
    if "hardening" in facts["_errors"]:
        assert results["hardening.controls"]["status"] == "fail"
        assert "not found" in results["hardening.controls"]["detail"]


def test_an_unreachable_host_is_an_error_not_a_pass(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {
                        "gone": {
                            "ansible_host": "127.0.0.1",
                            "ansible_port": 1,
                            "ansible_user": "nobody",
                            "ansible_ssh_common_args": (
                                "-o ConnectTimeout=3 -o StrictHostKeyChecking=no"
                            ),
                        }
                    }
                }
            }
        )
    )
    proc = compliance("check", "-i", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "gone" in proc.stdout and "ERROR" in proc.stdout and "unreachable" in proc.stdout
    assert "PASS" not in proc.stdout
    assert "[1/1] gone error: unreachable" in proc.stderr


@pytest.mark.parametrize(
    ("said", "named"),
    [
        ("Fatal: the host's Python ran out of memory\n", "python3 said: ...Fatal: the host's"),
        ("", "printed no facts and nothing else (exit 0)"),
    ],
)
def test_a_host_whose_python_prints_no_facts_is_an_error_saying_what_it_did(
    inventory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: str, named: str
) -> None:
    # The host's python3 leaves the fact script before it runs and exits 0 (a broken
    # interpreter, an OOM-killed child whose parent still says ok): the run names the
    # host as an error with what its python3 said, so an operator has it to go on.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys\n"
        f"if sys.argv and sys.argv[0].endswith({SCRIPT.name!r}):\n"
        f"    sys.stderr.write({said!r})\n"
        "    sys.stderr.flush()\n"
        "    os._exit(0)\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    proc = compliance("check", "-i", str(inventory), "--format", "json")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [host] = json.loads(proc.stdout)["hosts"]
    assert host["error"].startswith("gathering printed no facts"), host
    assert named in host["error"], host
    assert {r["status"] for r in json.loads(proc.stdout)["results"]} == {"error"}


def test_waivers_cover_failures_until_they_expire(inventory: Path, tmp_path: Path) -> None:
    today = datetime.date.today()
    waivers = tmp_path / "waivers.yml"
    waivers.write_text(
        json.dumps(
            [
                {
                    "check": "network.in_its_segment",
                    "hosts": ["here"],
                    "reason": "not a site host",
                    "approver": "ciso",
                    "expires": (today + datetime.timedelta(days=30)).isoformat(),
                },
                {
                    "check": "tls.policy",
                    "hosts": "all",
                    "reason": "no service here",
                    "approver": "ciso",
                    "expires": (today - datetime.timedelta(days=1)).isoformat(),
                },
            ]
        )
    )
    proc = compliance(
        "check",
        "-i",
        str(inventory),
        "--waivers",
        str(waivers),
        "--check",
        "network.in_its_segment",
        "--check",
        "tls.policy",
        "--format",
        "json",
    )
    results = {r["check"]: r for r in json.loads(proc.stdout)["results"]}
    assert results["network.in_its_segment"]["status"] == "waived"
    assert results["network.in_its_segment"]["waiver"]["approver"] == "ciso"
    assert results["tls.policy"]["status"] == "fail"  # the expired waiver no longer applies
    assert "waiver expired" in results["tls.policy"]["detail"]
    assert proc.returncode == 1
    waivers.write_text(
        json.dumps(
            [
                {
                    "check": "no.such.check",
                    "hosts": "all",
                    "reason": "x",
                    "approver": "y",
                    "expires": "2030-01-01",
                }
            ]
        )
    )
    bad = compliance("check", "-i", str(inventory), "--waivers", str(waivers))
    assert bad.returncode == 2 and "waivers.yml: [0]: no check 'no.such.check'" in bad.stderr


def test_bad_input_is_named() -> None:
    missing = compliance("check", "-i", "/nonexistent/inventory")
    assert missing.returncode == 2 and "/nonexistent/inventory: no such inventory" in missing.stderr
    unknown = compliance("check", "-i", str(ROOT / "inventories" / "lab"), "--check", "nope")
    assert unknown.returncode == 2 and "--check nope: no such check" in unknown.stderr


def test_the_fact_script_reads_the_tls_policy_certificates_and_hardening_report(
    tmp_path: Path,
) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    ca, key = development_ca()
    issue_development_leaf(tls, "server", ca, key)
    (tls / "policy.json").write_text(
        json.dumps({"crl_check": "leaf", "ciphersuites": ["TLS_AES_256_GCM_SHA384"]})
    )
    report = tmp_path / "hardening.json"
    report.write_text(
        json.dumps(
            {
                "controls": {
                    "sshd": {"status": "applied"},
                    "aide": {"status": "exempt"},
                    "auditd": {"status": "container"},
                    "sysctl": {"status": "missing"},
                }
            }
        )
    )
    sources = tmp_path / "sources.list"
    sources.write_text(
        "deb http://deb.debian.org/debian bookworm main\n"
        "deb [trusted=yes] http://mirror.internal/debian bookworm main\n"
        "# deb [trusted=yes] http://old.lan/debian bookworm main\n"
    )
    overrides = {
        "tls_dir": str(tls),
        "hardening_report": str(report),
        "apt_sources": [str(sources)],
    }
    command = [sys.executable, str(SCRIPT), json.dumps(overrides)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    facts = json.loads(out)
    assert facts["tls_policy"]["crl_check"] == "leaf"
    assert facts["tls_policy"]["ciphersuites"] == ["TLS_AES_256_GCM_SHA384"]
    assert 170 <= facts["certificates"]["days_left"]["server.pem"] <= 180
    assert facts["hardening"]["unapplied"] == ["sysctl"]
    assert facts["hardening"]["exempt"] == ["aide"]
    # Only the active line that turns signature checks off is named.
    assert facts["apt"]["unsigned_sources"] == [
        f"{sources}: deb [trusted=yes] http://mirror.internal/debian bookworm main"
    ]


def test_the_monthly_drill_check_wants_a_recent_drill_that_met_the_objectives(
    tmp_path: Path,
) -> None:
    reports = tmp_path / "dr"
    reports.mkdir()
    repository_conf = tmp_path / "pgbackrest.conf"
    repository_conf.write_text("[global]\nrepo1-path=/var/lib/pgbackrest\n")
    check = next(c for c in load_checks(load_catalogs()) if c.id == "database.dr_drill_recent")
    monthly = load_checklist("monthly", load_catalogs(), load_checks(load_catalogs()))
    assert "database.dr_drill_recent" in next(
        item.checks for item in monthly.items if item.id == "monthly.dr_test"
    )

    def drill(days_ago: float, rto: float = 50.0, rpo: float = 30.0, audit: str = "OK") -> None:
        started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days_ago)
        report = {
            "kind": "drill",
            "started": started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "rto_seconds": rto,
            "rpo_seconds": rpo,
            "audit_verify": f"audit log {audit}: 100 records",
            "met": True,  # what the report says of itself is not what the check goes by
        }
        name = f"drill-{started:%Y%m%dT%H%M%S}.json"
        (reports / name).write_text(json.dumps(report))

    def outcome() -> bool:
        return evaluate(check.rule, {"dr_drills": dr_drills({"dr_reports": str(reports)})}).passed

    assert not outcome()  # never drilled
    drill(40)
    assert not outcome()  # last month's is too old
    drill(3, rto=4000)
    assert not outcome()  # the newest took longer than an hour
    drill(2.5, rpo=1000)
    assert not outcome()  # ... lost more than fifteen minutes
    drill(2, audit="FAILED")
    assert not outcome()  # ... its audit log did not verify
    drill(1)
    assert outcome()
    # The fact script gathers it on a repository host (the configuration says which).
    overrides = {"pgbackrest_conf": str(repository_conf), "dr_reports": str(reports)}
    command = [sys.executable, str(SCRIPT), json.dumps(overrides)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert evaluate(check.rule, json.loads(out.stdout)).passed
    drill(-5)
    assert not outcome()  # dated in the future: no drill at all


def test_the_fact_script_names_the_files_anyone_may_write_and_times_its_parts(
    tmp_path: Path,
) -> None:
    root = tmp_path / "etc"
    (root / "sub").mkdir(parents=True)
    (root / "open-dir").mkdir(mode=0o777)
    (root / "open-dir").chmod(0o777)  # a directory anyone may write is not a file
    for name, mode in (("open", 0o666), ("sub/other-write", 0o602), ("closed", 0o644)):
        (root / name).write_text("x")
        (root / name).chmod(mode)
    (root / "link").symlink_to(root / "open")  # not followed: its target is named once
    # A root that is itself a symbolic link (/opt on some hosts) is walked.
    (tmp_path / "etc-link").symlink_to(root)
    overrides = {"writable_roots": [str(tmp_path / "etc-link"), str(tmp_path / "absent")]}
    command = [sys.executable, str(SCRIPT), json.dumps(overrides)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    facts = json.loads(out)
    walked = tmp_path / "etc-link"
    assert facts["files"] == {
        "world_writable": [str(walked / "open"), str(walked / "sub/other-write")],
        "world_writable_count": 2,
    }
    # Each part's seconds, for whoever asks why a host gathers slowly.
    assert {"apt", "files", "sshd", "all"} <= set(facts["_timings"])
    assert facts["_timings"]["all"] >= facts["_timings"]["files"]
