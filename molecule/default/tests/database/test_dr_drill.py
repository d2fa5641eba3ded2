"""The cold site restored from the database's backups (playbooks/dr-restore.yml, REQ-HA-5,
REQ-HA-14): a drill on core-03, a host in the dr_core segment that site.yml hardened but
that has never run the service.

Runs after the backup checks (the repository has followed every failover). What the primary
committed and the repository archived before the drill must come back; the drill must meet
the recovery objectives, verify the restored audit log against the witnesses (the records
written since are a gap, named), leave the primary site's log, witnesses and archive as
they were, and leave the cold site stopped. The monthly checklist's check then passes.
"""

from __future__ import annotations

import json
import time

from tests.support.commands import ROOT, compliance, run
from tests.support.database import ADDRESS, DATA_NODES, healthy_leader, local_sql
from tests.support.labhosts import lab_spec
from tests.support.service_load import ServiceLoad, lab_admin_receipts_logged

SPEC = lab_spec()
COLD = "core-03"
REPOSITORY = "mgmt-01"
PGBACKREST = "cd / && sudo -u postgres pgbackrest --stanza=securecore --log-level-console=warn"
CONFIG = "/etc/securecore/securecore.toml"
SECURECORE = "/opt/securecore/current/venv/bin/securecore"
AS_SERVICE = "cd / && runuser -u securecore -- env SOFTHSM2_CONF=/etc/securecore/softhsm2.conf"


def archive(host) -> list[dict]:
    return json.loads(host.check_output(f"{PGBACKREST} info --output=json"))[0]["archive"]


def newest_archived(host) -> str:
    """The newest WAL segment in the repository (its 24-digit name)."""
    return max(a["max"] for a in archive(host) if a.get("max"))


def test_a_drill_under_load_restores_the_cold_site_within_the_objectives_and_changes_nothing_else(
    hosts,
) -> None:
    primary = healthy_leader(hosts)
    serving = [ADDRESS[n] for n in DATA_NODES]
    with ServiceLoad(hosts["dmz-01"], serving) as requests:
        # What the primary site acknowledged before its WAL segment was closed (at once,
        # rather than after archive_timeout) must come back; what it acknowledges after
        # is, to the cold site, lost: the gap its witnesses prove.
        before = max(int(fields[2]) for fields in requests.lines() if fields[0] == "ok")
        segment = local_sql(hosts[primary], "SELECT pg_walfile_name(pg_switch_wal())").strip()
        deadline = time.monotonic() + 60
        while newest_archived(hosts[REPOSITORY])[8:] < segment[8:]:
            assert time.monotonic() < deadline, f"{segment} was not archived within 60 s"
            time.sleep(1)
        timelines = [a["id"] for a in archive(hosts[REPOSITORY])]

        drill = run("ansible-playbook", "playbooks/dr-restore.yml", timeout=1800)

        requests.wait_for_acknowledgements(20)
        service = requests.finish(lambda: lab_admin_receipts_logged(hosts[primary]))
    # The primary site served throughout, and logged every request it acknowledged.
    assert service["receipts"] > 40 and service["receipts_missing"] == [], service

    reports = sorted((ROOT / "output" / "dr").glob("drill-*.json"))
    report = json.loads(reports[-1].read_text())
    print(f"\nDR drill under load: {json.dumps(report, indent=2)}")
    assert report["kind"] == "drill" and report["hosts"] == [COLD]
    assert report["met"] is True
    assert report["rto_seconds"] <= report["rto_target_seconds"] == 3600
    assert 0 <= report["rpo_seconds"] <= report["rpo_target_seconds"] == 900
    restored = report["audit_records_restored"]
    assert restored >= before, report
    assert report["audit_verify"].startswith(f"audit log OK: {restored} records"), report
    # Anchored by what the backup carried: a checkpoint within the restored records that
    # a witness cosigned (the witnesses' own newest is beyond them), the rest named.
    assert "; proved against the checkpoint of " in report["audit_verify"], report
    assert "cosigned by mgmt-01/securecore/witness" in report["audit_verify"], report
    if report["audit_unwitnessed_tail"]:
        assert report["audit_unwitnessed_tail"].startswith("audit log TAIL: records "), report
    # The witnesses cosigned the requests acknowledged after the segment was closed (every
    # 10 s, under load): the restore names them, from the first record it lacks.
    assert report["audit_gap"].startswith(f"audit log GAP: records {restored + 1} to "), report
    assert f"drill on {COLD}: serving after" in drill.stdout

    # The cold site is cold again: nothing runs or starts at boot, no copy of the primary's
    # data or of the restored log stays; the restored cluster never archived into the
    # repository (no new timeline there).
    cold = hosts[COLD]
    assert not cold.service("securecore").is_running
    assert not cold.service("securecore").is_enabled
    assert not cold.service("postgresql@15-main").is_running
    # Debian's generator starts at boot only the clusters whose start.conf says auto.
    assert cold.file("/etc/postgresql/15/main/start.conf").content_string.strip() == "manual"
    assert cold.check_output("ls -A /var/lib/postgresql/15/main") == ""
    assert not cold.file("/var/lib/securecore/witness").exists
    assert [a["id"] for a in archive(hosts[REPOSITORY])] == timelines
    # The repository admitted the cold site for the restore only: it is refused again.
    admitted = hosts[REPOSITORY].check_output("grep ^tls-server-auth= /etc/pgbackrest.conf")
    assert f"database/{COLD}=" not in admitted, admitted
    refused = cold.run("cd / && sudo -u postgres pgbackrest --stanza=securecore info")
    assert "access denied" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    # The primary site's log still verifies against its witnesses: the drill's own
    # checkpoints never reached them (to them, a fork of the origin).
    for name in DATA_NODES:
        verified = hosts[name].run(f"{AS_SERVICE} {SECURECORE} audit verify -c {CONFIG}")
        assert verified.rc == 0 and "cosigned by" in verified.stdout, verified.stderr

    # The report is where the monthly checklist's check looks, and the check passes (with
    # the daily one on the same repository host's backups).
    assert hosts[REPOSITORY].file(f"/var/lib/securecore-dr/{reports[-1].name}").exists
    inventory = str(ROOT / "inventories" / "lab")
    check = ("--check", "database.dr_drill_recent", "--check", "database.backup_recent")
    checked = compliance("check", "-i", inventory, *check, "--limit", REPOSITORY)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
