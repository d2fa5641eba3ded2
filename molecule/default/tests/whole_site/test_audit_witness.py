"""The audit checkpoint witnesses on the lab, after site.yml (stage 5b, playbooks/witness.yml):
core-02, mgmt-01 and the cold site's core-03 run `securecore witness serve` as their own
user, every checkpoint of the core hosts' shared log reaches each, and a log rewritten in
the database and on core-01 (records, leaf file and checkpoints together) fails
`securecore audit verify` against them, naming the record."""

from __future__ import annotations

import json
import shlex
import time

import pytest

from tests.support.database import SERVICE_DSN, SERVICE_USER, leader
from tests.support.labhosts import lab_spec

SPEC = lab_spec()
CORE = tuple(h.name for h in SPEC.hosts if h.segment == "core")
WITNESSES = ("core-02", "mgmt-01", "core-03")
SECURECORE = "/opt/securecore/current/venv/bin/securecore"
AS_SERVICE = "runuser -u securecore -- env SOFTHSM2_CONF=/etc/securecore/softhsm2.conf"
CONFIG = "/etc/securecore/securecore.toml"
STATE = "/var/lib/securecore-witness"
DATA = "/var/lib/securecore"


@pytest.mark.parametrize("name", WITNESSES)
def test_the_witness_runs_as_its_own_user_with_state_the_service_cannot_write(hosts, name):
    host = hosts[name]
    service = host.service("securecore-witness")
    assert service.is_running and service.is_enabled
    pid = host.check_output("systemctl show -p MainPID --value securecore-witness")
    assert host.check_output(f"stat -c %U /proc/{pid}") == "securecore-witness"
    assert host.check_output(f"stat -c '%U %a' {STATE}") == "securecore-witness 700"
    if host.user("securecore").exists:
        assert host.run(f"runuser -u securecore -- touch {STATE}/origins/x").rc != 0


def _facts(host) -> dict:
    return json.loads(host.check_output(f"{AS_SERVICE} {SECURECORE} facts -c {CONFIG}"))


def test_checkpoints_reach_every_witness(hosts):
    # The host that holds the sequencer lock signs and sends the checkpoints, and
    # notes what each witness cosigned: either core host, whichever it is now.
    deadline = time.monotonic() + 90
    while True:
        audits = [_facts(hosts[name])["audit"] for name in CORE]
        reached = [
            audit
            for audit in audits
            if len(audit["witnesses"]) == len(WITNESSES)
            and all(status.get("size") for status in audit["witnesses"].values())
            and audit["verified"]
        ]
        if reached:
            break
        assert time.monotonic() < deadline, audits
        time.sleep(3)
    for name in CORE:  # asked now: every host's log is anchored by the witnesses
        out = hosts[name].check_output(f"{AS_SERVICE} {SECURECORE} audit verify -c {CONFIG}")
        assert "audit log OK" in out and "cosigned by" in out, out


# Whoever holds the database (postgres on the primary) rewrites record 1 and drops
# every checkpoint; root on core-01 rebuilds its leaf file to match and removes its
# checkpoints: a log that agrees with itself, and only the witnesses remember.
REWRITE_DATABASE = """
UPDATE audit_records SET entry = convert_to(replace(convert_from(entry, 'UTF8'),
  '"outcome":', '"outcome" :'), 'UTF8') WHERE seq = 1;
DELETE FROM audit_checkpoints;
"""
REWRITE_LEAVES = """
import hashlib, pathlib, sys
entries = [bytes.fromhex(line) for line in sys.stdin.read().split()]
witness = pathlib.Path("/var/lib/securecore/witness")
(witness / "leaves").write_bytes(b"".join(hashlib.sha256(b"\\x00" + e).digest() for e in entries))
for sub in ("checkpoints", "cosigned"):
    for path in (witness / sub).glob("*"):
        path.unlink()
"""
KEEP = (
    "DROP TABLE IF EXISTS kept_records, kept_checkpoints;"
    " CREATE TABLE kept_records AS SELECT * FROM audit_records;"
    " CREATE TABLE kept_checkpoints AS SELECT * FROM audit_checkpoints;"
)
PUT_BACK = (
    "BEGIN; DELETE FROM audit_records; DELETE FROM audit_checkpoints;"
    " INSERT INTO audit_records SELECT * FROM kept_records;"
    " INSERT INTO audit_checkpoints SELECT * FROM kept_checkpoints;"
    " DROP TABLE kept_records, kept_checkpoints; COMMIT;"
)


def test_a_log_rewritten_in_the_database_and_on_a_host_fails_against_the_witnesses(hosts):
    core = hosts["core-01"]
    primary = hosts[leader(core)]
    for name in CORE:
        hosts[name].check_output("systemctl stop securecore")
    core.check_output(f"rm -rf /root/audit-kept && cp -a {DATA} /root/audit-kept")
    as_owner(primary, KEEP)
    try:
        as_owner(primary, REWRITE_DATABASE)
        # The records read as the service reads them, piped into the rewrite on core-01.
        select = "SELECT encode(entry, 'hex') FROM audit_records ORDER BY seq"
        core.check_output(
            f"cd / && sudo -u {SERVICE_USER} psql --no-psqlrc -At {shlex.quote(SERVICE_DSN)}"
            f" -c {shlex.quote(select)} | python3 -c {shlex.quote(REWRITE_LEAVES)}"
        )
        verify = core.run(f"{AS_SERVICE} {SECURECORE} audit verify -c {CONFIG}")
        assert verify.rc == 1, verify.stdout + verify.stderr
        assert "first bad record: 1" in verify.stderr and "cannot be proved" in verify.stderr
        # The service will not open the rewritten log (nor sign over it).
        started = core.run(f"{AS_SERVICE} timeout 60 {SECURECORE} serve -c {CONFIG}")
        assert started.rc == 2 and "tampered" in started.stderr, started.stderr
    finally:
        as_owner(primary, PUT_BACK)
        core.check_output(f"rm -rf {DATA} && cp -a /root/audit-kept {DATA}")
        for name in CORE:
            hosts[name].check_output("systemctl start securecore")
    out = core.check_output(f"{AS_SERVICE} {SECURECORE} audit verify -c {CONFIG}")
    assert "audit log OK" in out, out


def as_owner(host, sql: str) -> str:
    """SQL in the service's database as postgres, the database's superuser, over the
    primary's unix socket."""
    return host.check_output(
        f"cd / && sudo -u postgres psql --no-psqlrc -At -v ON_ERROR_STOP=1 -d securecore"
        f" -c {shlex.quote(sql)}"
    )
