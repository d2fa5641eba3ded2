"""The compliance hardening checks against the lab hosts before and after site.yml:
every bare host (results kept by molecule/default/prepare.yml, run between `lab up`
and the converge) fails them, every converged host passes them - the checks tell a
hardened host from one that is not."""

from __future__ import annotations

import json

import pytest

from tests.support.commands import ROOT
from tests.support.labhosts import lab_spec

SPEC = lab_spec()
HARDENING = [
    "ssh.root_login_disabled",
    "ssh.keys_only",
    "ssh.aead_ciphers",
    "ssh.idle_timeout",
    "pam.lockout",
    "password.aging_and_history",
    "su.restricted",
    "logging.persistent_one_year",
    "auditd.rules",
    "integrity.aide",
    "hardening.controls",
    "files.no_world_writable",
]
# What a bare Debian host lacks whatever its image: no account lockout, no password
# aging, no audit rules, no file integrity database, no hardening report.
BARE_FAILS = [
    "pam.lockout",
    "password.aging_and_history",
    "auditd.rules",
    "integrity.aide",
    "hardening.controls",
]
BARE = ROOT / "output" / "molecule-default" / "bare-hosts.json"


def statuses(document: dict) -> dict[tuple[str, str], str]:
    return {(r["host"], r["check"]): r["status"] for r in document["results"]}


@pytest.fixture(scope="module")
def converged(site_check) -> dict:
    """The hardening checks' results from the session's `compliance check` over the lab
    (conftest.py)."""
    document, _, _ = site_check
    return {**document, "results": [r for r in document["results"] if r["check"] in HARDENING]}


def test_the_bare_hosts_failed_the_hardening_checks() -> None:
    document = json.loads(BARE.read_text())
    assert {h["host"]: h["error"] for h in document["hosts"]} == {h.name: None for h in SPEC.hosts}
    found = statuses(document)
    for host in SPEC.hosts:
        failed = [c for c in BARE_FAILS if found[host.name, c] == "fail"]
        assert failed == BARE_FAILS, (host.name, {c: found[host.name, c] for c in BARE_FAILS})
    assert sum(s == "fail" for s in found.values()) > len(found) / 2


def test_the_converged_hosts_pass_them(converged: dict) -> None:
    found = statuses(converged)
    failing = {k: v for k, v in found.items() if v != "pass"}
    assert failing == {}, [r["detail"] for r in converged["results"] if r["status"] != "pass"]
    assert len(found) == len(HARDENING) * len(SPEC.hosts)
