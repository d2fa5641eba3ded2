"""The audit checkpoint witnesses on the lab, after site.yml (stage 5b, playbooks/witness.yml):
core-02 and mgmt-01 run `securecore witness serve` as their own user, every core checkpoint
reaches both, and a log rewritten as root on core-01 (database, leaf file and checkpoints
together) fails `securecore audit verify` against them, naming the record."""

from __future__ import annotations

import json
import shlex
import time

import pytest

from tests.support.labhosts import lab_spec

SPEC = lab_spec()
WITNESSES = ("core-02", "mgmt-01")
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


def test_checkpoints_reach_both_witnesses(hosts):
    core = hosts["core-01"]
    deadline = time.monotonic() + 90
    while True:
        audit = _facts(core)["audit"]
        sizes = {name: status.get("size") for name, status in audit["witnesses"].items()}
        if len(sizes) == 2 and all(sizes.values()) and audit["verified"]:
            break
        assert time.monotonic() < deadline, audit
        time.sleep(3)
    out = core.check_output(f"{AS_SERVICE} {SECURECORE} audit verify -c {CONFIG}")
    assert "audit log OK" in out and "cosigned by" in out, out


REWRITE = """
import hashlib, pathlib, sqlite3
db = sqlite3.connect("/var/lib/securecore/data/audit.db")
db.execute("UPDATE audit_records SET entry = CAST(REPLACE(CAST(entry AS TEXT), '\\"outcome\\":', "
           "'\\"outcome\\" :') AS BLOB) WHERE seq = 1")
db.execute("DELETE FROM audit_checkpoints")
db.commit()
leaves = b"".join(hashlib.sha256(b"\\x00" + bytes(e)).digest()
                  for (e,) in db.execute("SELECT entry FROM audit_records ORDER BY seq"))
witness = pathlib.Path("/var/lib/securecore/witness")
(witness / "leaves").write_bytes(leaves)
for sub in ("checkpoints", "cosigned"):
    for path in (witness / sub).glob("*"):
        path.unlink()
"""


def test_a_log_rewritten_as_root_fails_against_the_witnesses(hosts):
    core = hosts["core-01"]
    core.check_output("systemctl stop securecore")
    core.check_output(f"rm -rf /root/audit-kept && cp -a {DATA} /root/audit-kept")
    try:
        core.check_output(f"python3 -c {shlex.quote(REWRITE)}")
        verify = core.run(f"{AS_SERVICE} {SECURECORE} audit verify -c {CONFIG}")
        assert verify.rc == 1, verify.stdout + verify.stderr
        assert "first bad record: 1" in verify.stderr and "cannot be proved" in verify.stderr
        # The service will not open the rewritten log (nor sign over it).
        started = core.run(f"{AS_SERVICE} timeout 60 {SECURECORE} serve -c {CONFIG}")
        assert started.rc == 2 and "tampered" in started.stderr, started.stderr
    finally:
        core.check_output(f"rm -rf {DATA} && cp -a /root/audit-kept {DATA}")
        core.check_output("systemctl start securecore")
    out = core.check_output(f"{AS_SERVICE} {SECURECORE} audit verify -c {CONFIG}")
    assert "audit log OK" in out, out
