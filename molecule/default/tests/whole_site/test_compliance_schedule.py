"""The compliance scheduler on the lab's management host (mgmt-01): the checklists on
timers at the report times of REQ-COMP-12, a scheduled run that reaches every host over
SSH through the firewall zones and writes signed evidence, and a missed run found."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization

from compliance.evidence import key_id
from tests.support.commands import ROOT
from tests.support.labhosts import connect, lab_spec

SPEC = lab_spec()
SCHEDULES = {
    "daily": "*-*-* 09:00:00 UTC",
    "weekly": "Mon *-*-* 10:00:00 UTC",
    "monthly": "*-*-01 14:00:00 UTC",
}
HOME = "/var/lib/securecore-compliance"
TOOL = "/opt/securecore-compliance/current/venv/bin/compliance"
METRICS = "/var/lib/prometheus/node-exporter/securecore_compliance.prom"
PUBLIC = f"{HOME}/evidence.key.pub"
# An item's states that leave nothing to fix: done, not applicable here (with the reason),
# or waiting for a person's attestation.
ATTAINED = ("pass", "not_applicable", "pending")
HEADS = f"{HOME}/heads"


@pytest.fixture(scope="module")
def mgmt():
    [host] = [h for h in SPEC.hosts if h.name == "mgmt-01"]
    return connect(SPEC, host)


def test_the_checklists_are_on_timers_at_their_report_times(mgmt) -> None:
    for name, calendar in SCHEDULES.items():
        timer = f"securecore-compliance-{name}.timer"
        assert mgmt.service(timer).is_enabled and mgmt.service(timer).is_running
        shown = mgmt.check_output(f"systemctl show -p TimersCalendar --value {timer}")
        assert f"OnCalendar={calendar} ;" in shown, shown
        assert mgmt.check_output(f"systemctl show -p Persistent --value {timer}") == "yes"
    assert mgmt.service("securecore-compliance-status.timer").is_running


def test_a_scheduled_run_reaches_every_host_and_writes_signed_evidence(mgmt) -> None:
    mgmt.run("systemctl reset-failed securecore-compliance@daily.service")
    started = mgmt.run("systemctl start securecore-compliance@daily.service")
    result = mgmt.check_output("systemctl show -p Result --value securecore-compliance@daily")
    assert started.rc == 0 and result == "success", started.stderr
    newest = mgmt.check_output(f"ls -1d {HOME}/evidence/daily/*/ | tail -1").rstrip("/")
    document = json.loads(mgmt.file(f"{newest}/results.json").content_string)
    gathered = {h["host"]: h["error"] for h in document["hosts"]}
    # Every host of the site, mgmt-01 included, reached over SSH at its segment address.
    assert gathered == {h.name: None for h in SPEC.hosts}
    checks = {(r["check"], r["host"]): r["status"] for r in document["results"]}
    assert checks["firewall.default_drop", "plugin-01"] == "pass"
    # A site just deployed passes its own daily checklist: nothing failed, only the
    # items a person attests wait (REQ-COMP-8). The performance figures are a check, and
    # pass: what the site has had (the converge's health checks, the plugin's
    # registration) is too little to judge or, with no user yet, not there to measure.
    items = json.loads(mgmt.file(f"{newest}/checklist.json").content_string)
    unmet = {i["id"]: i["failing"] for i in items if i["status"] not in ATTAINED}
    assert unmet == {}
    pending = {i["id"] for i in items if i["status"] == "pending"}
    assert pending == {"daily.security_alerts", "daily.report_and_plan"}
    assert checks["performance.targets_24h", "mgmt-01"] == "pass"
    assert checks["service.ready", "core-01"] == "pass"
    verified = mgmt.run(
        f"{TOOL} verify {HOME}/evidence/daily --trusted-key {PUBLIC} --head {HEADS}/daily.json"
    )
    assert verified.rc == 0, verified.stdout
    assert "the series' newest runs are all here" in verified.stdout
    # The series head is outside the evidence directory and names this run.
    head = json.loads(mgmt.file(f"{HEADS}/daily.json").content_string)["record"]
    assert head["newest"]["id"] == newest.rsplit("/", 1)[1]
    # Without a trust anchor there is no verification, only an UNVERIFIED inspection.
    bare = mgmt.run(f"{TOOL} verify {HOME}/evidence/daily")
    assert bare.rc == 2 and "no trust anchor" in bare.stderr
    embedded = mgmt.run(f"{TOOL} verify {HOME}/evidence/daily --trust-embedded-key")
    assert embedded.rc == 3 and embedded.stdout.startswith("UNVERIFIED")
    assert mgmt.file(f"{newest}.tar.gz").exists
    # The lab signs with a key on a SoftHSM2 token: no key file, the PIN readable by
    # the scheduler's group only, the key itself not extractable.
    assert not mgmt.file("/etc/securecore-compliance/evidence.key").exists
    pin = mgmt.file("/etc/securecore-compliance/evidence.pin")
    assert (pin.user, pin.group, pin.mode) == ("root", "compliance", 0o640)
    unit = mgmt.file("/etc/systemd/system/securecore-compliance@.service").content_string
    assert '--signing-key "pkcs11:token=compliance-evidence;object=compliance-evidence-v1?' in unit
    signature = json.loads(mgmt.file(f"{newest}/signature.json").content_string)
    # The controller has the public key auditors verify with, and it signed the bundle.
    controller_copy = ROOT / "output" / "compliance" / "evidence-mgmt-01.key.pub"
    assert controller_copy.read_text() == mgmt.file(PUBLIC).content_string
    public = serialization.load_pem_public_key(controller_copy.read_bytes())
    assert signature["key_id"] == key_id(public)
    assert (
        'securecore_compliance_last_run_timestamp_seconds{checklist="daily"}'
        in mgmt.file(METRICS).content_string
    )
    # The scheduler's key only works from the management host's address.
    authorized = connect(SPEC, SPEC.hosts[0]).file("/home/ansible/.ssh/authorized_keys")
    assert 'from="10.210.10.10"' in authorized.content_string


def test_a_missed_run_is_found_and_alerted(mgmt) -> None:
    marker = f"{HOME}/evidence/.installed"
    before = mgmt.check_output(f"stat -c %Y {marker}")
    try:
        mgmt.check_output(f"touch -m -d '40 days ago' {marker}")
        since = mgmt.check_output("date '+%Y-%m-%d %H:%M:%S'")
        status = mgmt.run("systemctl start securecore-compliance-status.service")
        assert status.rc != 0  # the unit fails: a run was missed
        journal = mgmt.check_output(
            f"journalctl -u securecore-compliance-status --since '{since}' -o cat -p err"
        )
        assert "missed run: no weekly run since" in journal
        assert "missed run: no monthly run since" in journal
        assert "daily" not in journal  # it ran in the test before
        metrics = mgmt.file(METRICS).content_string
        assert 'securecore_compliance_run_missed{checklist="weekly"} 1' in metrics
        assert 'securecore_compliance_run_missed{checklist="daily"} 0' in metrics
    finally:
        mgmt.check_output(f"touch -m -d @{before} {marker}")
        mgmt.run("systemctl reset-failed securecore-compliance-status.service")


def test_tampering_with_the_series_on_the_host_is_found(mgmt) -> None:
    for _ in range(2):  # the test before made one bundle: three in the series now
        assert mgmt.run("systemctl start securecore-compliance@daily.service").rc == 0
    scratch = mgmt.check_output("mktemp -d")
    try:
        mgmt.check_output(f"cp -a {HOME}/evidence/daily {scratch}/")
        series = f"{scratch}/daily"
        bundles = mgmt.check_output(f"ls -1d {series}/*/").split()
        assert len(bundles) >= 3
        mgmt.check_output(f"cp {HEADS}/daily.json {scratch}/head.json")
        clean = mgmt.run(
            f"{TOOL} verify {series} --trusted-key {PUBLIC} --head {scratch}/head.json"
        )
        assert clean.rc == 0, clean.stdout
        # The newest run removed (its archive too): the series head names it.
        newest = bundles[-1].rstrip("/").rsplit("/", 1)[1]
        mgmt.check_output(f"mv {bundles[-1]} {series}/{newest}.tar.gz {scratch}/")
        truncated = mgmt.run(
            f"{TOOL} verify {series} --trusted-key {PUBLIC} --head {scratch}/head.json"
        )
        assert truncated.rc == 1 and f"names {newest} as the newest" in truncated.stdout
        mgmt.check_output(f"mv {scratch}/{newest} {scratch}/{newest}.tar.gz {series}/")
        # The status check verifies the real series against the head: all well.
        status = mgmt.run("systemctl start securecore-compliance-status.service")
        assert status.rc == 0, mgmt.run("journalctl -u securecore-compliance-status -n 20").stdout
        # A changed result in the newest, a removed bundle in the middle.
        mgmt.check_output(f'sed -i \'s/"pass"/"fail"/\' {bundles[-1]}results.json')
        mgmt.check_output(f"rm -r {bundles[-2]}")
        found = mgmt.run(f"{TOOL} verify {series} --trusted-key {PUBLIC}")
        assert found.rc == 1
        assert "results.json: changed" in found.stdout
        removed = bundles[-2].rstrip("/").rsplit("/", 1)[1]
        assert f"follows {removed}" in found.stdout and "CHAIN" in found.stdout
        # Another key than the scheduler's: every bundle is named.
        mgmt.check_output(f"{TOOL} keygen --key {scratch}/other.key")
        other = mgmt.run(f"{TOOL} verify {series} --trusted-key {scratch}/other.key.pub")
        assert other.rc == 1 and other.stdout.count("not by a trusted key") == len(bundles) - 1
    finally:
        mgmt.run(f"rm -rf {scratch}")
