"""Requests to the core service from the DMZ, as the lab's administrator, kept with
their receipts: for the failover checks, which then look every receipt up in the
audit log (REQ-AUDIT-11).

The client is given every core host's address (until the DMZ edge balances them)
and sends each request to the next address in turn; an answer counts as
acknowledged when it is a 200 with an `audit-record` header.
"""

from __future__ import annotations

import itertools
import json
import shlex
import time
import uuid
from collections.abc import Callable

import testinfra

from tests.support.database import psql_as_service
from tests.support.labhosts import TLS, https, lab_spec, ssh_from_controller

SPEC = lab_spec()
ADMIN_DIR = "/tmp/lab-admin"  # on the DMZ host, for the length of a check

# Prints "ok HOST SEQ T" for an acknowledged request or "error HOST T WHAT"; runs for
# at most its given seconds, or until the stop file exists.
CLIENT = r"""
import http.client, json, os, ssl, sys, threading, time
a = json.loads(sys.argv[1])
ctx = ssl.create_default_context(cafile=a["ca"])
ctx.load_cert_chain(a["cert"], a["key"])
end, out = time.monotonic() + a["seconds"], threading.Lock()
def say(line):
    with out:
        print(line, flush=True)
def client(first):
    i = first
    while time.monotonic() < end and not os.path.exists(a["stop"]):
        host = a["addresses"][i % len(a["addresses"])]
        i += 1
        try:
            c = http.client.HTTPSConnection(host, 8443, context=ctx, timeout=5)
            c.request("GET", "/v1/whoami")
            r = c.getresponse()
            r.read()
            seq = r.getheader("audit-record")
            if r.status == 200 and seq:
                say(f"ok {host} {seq} {time.time():.3f}")
            else:
                say(f"error {host} {time.time():.3f} {r.status}")
            c.close()
        except Exception as e:
            say(f"error {host} {time.time():.3f} {type(e).__name__}")
        time.sleep(0.05)
threads = [threading.Thread(target=client, args=(n,)) for n in range(a["clients"])]
for t in threads: t.start()
for t in threads: t.join()
"""


def install_admin_certificate(dmz: testinfra.host.Host, name: str = "dmz-01") -> None:
    """The lab administrator's certificate and key on DMZ, the lab host NAME (in
    ADMIN_DIR, 0700), sent on stdin, never on a command line."""
    dmz_spec = next(h for h in SPEC.hosts if h.name == name)
    admin = SPEC.state_dir / "admins" / "lab-admin"
    dmz.check_output(f"install -d -m 0700 {ADMIN_DIR}")
    for name in ("client.pem", "client.key"):
        copied = ssh_from_controller(
            SPEC,
            dmz_spec,
            "-i",
            str(SPEC.ssh_key),
            command=f"sudo sh -c 'umask 077; cat > {ADMIN_DIR}/{name}'",
            stdin=(admin / name).read_text(),
        )
        assert copied.returncode == 0, copied.stderr


class ServiceLoad:
    """CLIENT running on the DMZ host against every core host, for at most 240 s, with
    CLIENTS threads (each one request at a time, each starting on another host)."""

    def __init__(self, dmz: testinfra.host.Host, addresses: list[str], clients: int = 1) -> None:
        self.dmz, self.addresses, self.clients = dmz, addresses, clients
        self.unit = f"securecore-test-requests-{uuid.uuid4().hex[:8]}"
        self.output, self.stop_file = f"/tmp/{self.unit}.out", f"/tmp/{self.unit}.stop"

    def __enter__(self) -> ServiceLoad:
        install_admin_certificate(self.dmz)
        settings = {
            "addresses": self.addresses,
            "ca": f"{TLS}/ca.pem",
            "cert": f"{ADMIN_DIR}/client.pem",
            "key": f"{ADMIN_DIR}/client.key",
            "seconds": 240,
            "stop": self.stop_file,
            "clients": self.clients,
        }
        self.dmz.check_output(
            f"systemd-run --unit {self.unit} --collect -p WorkingDirectory=/tmp"
            f" -p StandardOutput=file:{self.output} python3 -c {shlex.quote(CLIENT)}"
            f" {shlex.quote(json.dumps(settings))}"
        )
        self.wait_for_acknowledgements(10)
        return self

    def lines(self) -> list[list[str]]:
        return [line.split() for line in self.dmz.file(self.output).content_string.splitlines()]

    def wait_for_acknowledgements(self, count: int, timeout: float = 120) -> None:
        def acknowledged() -> int:
            return sum(1 for fields in self.lines() if fields[0] == "ok")

        start, deadline = acknowledged(), time.monotonic() + timeout
        while acknowledged() < start + count:
            assert time.monotonic() < deadline, f"no {count} answers within {timeout} s"
            time.sleep(0.5)

    def finish(self, logged: Callable[[], set[int]]) -> dict:
        """Stop the client; the figures, with the receipts not among LOGGED() (the audit
        log's sequence numbers, read once the client has stopped)."""
        self.dmz.run(f"touch {self.stop_file}")
        for _ in range(60):
            if self.dmz.run(f"systemctl is-active --quiet {self.unit}").rc != 0:
                break
            time.sleep(0.5)
        lines = self.lines()
        figures: dict = {"receipts_missing": []}
        for address in self.addresses:
            mine = [fields for fields in lines if fields[1] == address]
            answered = [float(fields[3]) for fields in mine if fields[0] == "ok"]
            gaps = [later - earlier for earlier, later in itertools.pairwise(answered)]
            figures[address] = {
                "acknowledged": len(answered),
                "errors": sum(1 for fields in mine if fields[0] == "error"),
                "longest_gap_s": round(max(gaps, default=0.0), 1),
            }
        receipts = [int(fields[2]) for fields in lines if fields[0] == "ok"]
        figures["receipts"] = len(receipts)
        figures["receipts_missing"] = sorted(set(receipts) - logged())
        return figures

    def __exit__(self, *exc: object) -> None:
        self.dmz.run(f"touch {self.stop_file}; systemctl stop {self.unit} 2>/dev/null")
        self.dmz.run(f"rm -rf {self.stop_file} {self.output} {ADMIN_DIR}")


def lab_admin_receipts_logged(host: testinfra.host.Host) -> set[int]:
    """The sequence numbers of the lab administrator's records in the shared audit log,
    read through the service's own connection on HOST."""
    rows = psql_as_service(
        host,
        "SELECT seq FROM audit_records"
        " WHERE position('\"admin/lab-admin\"' in convert_from(entry, 'UTF8')) > 0",
    )
    return {int(row) for row in rows}


def wait_ready(hosts: dict, names: list[str], addresses: dict, timeout: float = 120) -> None:
    """Until every core host NAMES answers /readyz with 200 (over mutual TLS, asked on
    itself with its own certificate)."""
    deadline = time.monotonic() + timeout
    for name in names:
        while https(hosts[name], addresses[name], "GET", "/readyz")[0] != 200:
            assert time.monotonic() < deadline, f"{name} is not ready {timeout} s on"
            time.sleep(1)
