"""The cold site restored from the database's off-site backups (playbooks/dr-restore.yml,
REQ-HA-5, REQ-HA-14): a drill on core-03, a host in the dr_core segment that site.yml
hardened, made the off-site repository and a witness, but that has never run the service.

Runs after the backup checks (both repositories have followed every failover). The drill
is run as the disaster would leave it: the cold site cut off from the primary site (its
repository, witnesses and database nodes), so that it can use only what it keeps itself.
What the primary committed and the off-site repository archived before the cut must come
back; the drill must meet the recovery objectives, verify the restored audit log against
the cold site's witness (the records it cosigned since are a gap, named), leave the primary
site's log, witnesses and archives as they were, and leave the cold site stopped. Once the
link is back, the off-site repository catches up; the monthly checklist's check passes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.commands import ROOT, compliance, run
from tests.support.database import ADDRESS, DATA_NODES, healthy_leader, local_sql
from tests.support.labhosts import lab_spec
from tests.support.service_load import ServiceLoad, lab_admin_receipts_logged

SPEC = lab_spec()
COLD = "core-03"  # the cold site: the off-site repository (repo2), a witness, the restore
REPOSITORY = "mgmt-01"  # the primary site's repository (repo1)
# Every host outside the cold site's segment: what a loss of the primary site takes.
PRIMARY_SITE = tuple(h.name for h in SPEC.hosts if h.segment != "dr_core")
PGBACKREST_PORT = 8432
REPO = {REPOSITORY: 1, COLD: 2}
PGBACKREST = "cd / && sudo -u postgres pgbackrest --stanza=securecore --log-level-console=warn"
CONFIG = "/etc/securecore/securecore.toml"
SECURECORE = "/opt/securecore/current/venv/bin/securecore"
AS_SERVICE = "cd / && runuser -u securecore -- env SOFTHSM2_CONF=/etc/securecore/softhsm2.conf"
WITNESS_STATE = "/var/lib/securecore-witness/origins"


def archive(hosts, repository: str) -> list[dict]:
    command = f"{PGBACKREST} --repo={REPO[repository]} info --output=json"
    return json.loads(hosts[repository].check_output(command))[0]["archive"]


def newest_archived(hosts, repository: str) -> str:
    """The newest WAL segment in the repository (its 24-digit name)."""
    return max(a["max"] for a in archive(hosts, repository) if a.get("max"))


def wait_until_archived(hosts, segment: str, repositories: tuple[str, ...]) -> None:
    deadline = time.monotonic() + 60
    for repository in repositories:
        while newest_archived(hosts, repository)[8:] < segment[8:]:  # timelines aside
            assert time.monotonic() < deadline, f"{segment} not in {repository}'s archive in 60 s"
            time.sleep(1)


def witnessed_size(host) -> int:
    """The size of the newest checkpoint the host's witness cosigned (a checkpoint's
    second line)."""
    sizes = host.check_output(f'for f in {WITNESS_STATE}/*; do sed -n 2p "$f"; done')
    return max(int(size) for size in sizes.split())


@contextmanager
def cut_off(host, peers: tuple[str, ...], port: int | None = None) -> Iterator[None]:
    """Every packet between the host and the peers refused (to or from PORT of the host
    only, if given), in a table of its own beside the site's ruleset, removed after: as
    a lost site would leave it, but refused at once rather than left to time out. The
    controller's SSH comes from the lab's gateway."""
    addresses = ", ".join(ADDRESS[peer] for peer in peers)
    table = f"securecore_test_cut_{port or 'all'}"
    inbound, outbound = ("", "") if port is None else (f" tcp dport {port}", f" tcp sport {port}")
    host.check_output(
        "nft -f - <<'EOF'\n"
        f"table inet {table} {{\n"
        "  chain input {\n"
        "    type filter hook input priority -10; policy accept;\n"
        f"    ip saddr {{ {addresses} }}{inbound} reject\n"
        "  }\n"
        "  chain output {\n"
        "    type filter hook output priority -10; policy accept;\n"
        f"    ip daddr {{ {addresses} }}{outbound} reject\n"
        "  }\n"
        "}\nEOF"
    )
    try:
        yield
    finally:
        host.check_output(f"nft delete table inet {table}")


def test_a_drill_under_load_restores_the_cold_site_within_the_objectives_and_changes_nothing_else(
    hosts,
) -> None:
    primary = healthy_leader(hosts)
    serving = [ADDRESS[n] for n in DATA_NODES]
    with ServiceLoad(hosts["dmz-01"], serving) as requests:
        # What the primary site acknowledged before its WAL segment was closed (at once,
        # rather than after archive_timeout) must come back; what it acknowledges after
        # is, to the cold site, lost: the gap its witness proves.
        before = max(int(fields[2]) for fields in requests.lines() if fields[0] == "ok")
        segment = local_sql(hosts[primary], "SELECT pg_walfile_name(pg_switch_wal())").strip()
        wait_until_archived(hosts, segment, (REPOSITORY, COLD))
        timelines = {name: [a["id"] for a in archive(hosts, name)] for name in (REPOSITORY, COLD)}
        # The off-site repository is cut off first, then the cold site's witness cosigns
        # records the archive there does not hold (a checkpoint every 10 s under load):
        # the gap the restore must name. Then the whole primary site is cut off.
        with cut_off(hosts[COLD], PRIMARY_SITE, port=PGBACKREST_PORT):
            archived = newest_archived(hosts, COLD)
            acknowledged = max(int(f[2]) for f in requests.lines() if f[0] == "ok")
            deadline = time.monotonic() + 40
            while witnessed_size(hosts[COLD]) <= acknowledged:
                assert time.monotonic() < deadline, f"{COLD}'s witness fell behind for 40 s"
                time.sleep(1)
            with cut_off(hosts[COLD], PRIMARY_SITE):
                drill = run("ansible-playbook", "playbooks/dr-restore.yml", timeout=1800)
            assert newest_archived(hosts, COLD) == archived  # nothing reached it since

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
    assert f"cosigned by {COLD}/securecore/witness" in report["audit_verify"], report
    if report["audit_unwitnessed_tail"]:
        assert report["audit_unwitnessed_tail"].startswith("audit log TAIL: records "), report
    # The cold site's witness cosigned requests acknowledged after the segment was closed:
    # the restore names them, from the first record it lacks.
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
    assert not cold.file("/etc/pgbackrest/restore.conf").exists
    assert {name: [a["id"] for a in archive(hosts, name)] for name in REPO} == timelines
    # The primary site's repository never admitted the cold site (its certificate is
    # refused there: test_database_backup.py).
    admitted = hosts[REPOSITORY].check_output("grep ^tls-server-auth= /etc/pgbackrest.conf")
    assert f"database/{COLD}=" not in admitted, admitted
    # With the link back, the off-site repository catches up with what the primary
    # archived during the cut.
    segment = local_sql(hosts[primary], "SELECT pg_walfile_name(pg_switch_wal())").strip()
    wait_until_archived(hosts, segment, (REPOSITORY, COLD))
    # The primary site's log still verifies against its witnesses: the drill's own
    # checkpoints never reached them (to them, a fork of the origin).
    for name in DATA_NODES:
        verified = hosts[name].run(f"{AS_SERVICE} {SECURECORE} audit verify -c {CONFIG}")
        assert verified.rc == 0 and "cosigned by" in verified.stdout, verified.stderr

    # The report is where the monthly checklist's check looks, on both repository hosts,
    # and the check passes (with the daily one on the same hosts' backups).
    for name in REPO:
        assert hosts[name].file(f"/var/lib/securecore-dr/{reports[-1].name}").exists
    inventory = str(ROOT / "inventories" / "lab")
    check = ("--check", "database.dr_drill_recent", "--check", "database.backup_recent")
    checked = compliance("check", "-i", inventory, *check, "--limit", ",".join(REPO))
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
