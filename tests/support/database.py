"""The lab's database cluster from tests: Patroni's view, SQL as the service, and the
hosts' state, all reached over SSH like every lab check (tests/support/labhosts.py)."""

from __future__ import annotations

import itertools
import json
import shlex
import subprocess
import time
import uuid

import testinfra

from tests.support.labhosts import lab_spec

SPEC = lab_spec()
ADDRESS = {host.name: str(host.address) for host in SPEC.hosts}
DATA_NODES = ("core-01", "core-02")
CONSENSUS = ("core-01", "core-02", "mgmt-01")
PATRONI = "/etc/patroni"
PATRONICTL = f"cd / && sudo -u postgres patronictl -c {PATRONI}/config.yml"

# The service's connection, as the service makes it: every data node, the writable
# one chosen by libpq, the core host's own client certificate and key (its name maps
# to the service's role), the server's checked against the database CA and its CRLs.
SERVICE_TLS = "/etc/securecore/tls"
SERVICE_DSN = (
    f"host={','.join(ADDRESS[n] for n in DATA_NODES)} port=5432 dbname=securecore"
    f" user=securecore target_session_attrs=read-write connect_timeout=3 sslmode=verify-full"
    f" sslrootcert={SERVICE_TLS}/database-ca.pem sslcrl={SERVICE_TLS}/database-crl-chain.pem"
    f" sslcert={SERVICE_TLS}/client.pem sslkey={SERVICE_TLS}/client.key"
)
SERVICE_USER = "securecore"


def members(host: testinfra.host.Host) -> list[dict]:
    """patronictl's member list (Member, Role, State, TL, ...), asked on HOST."""
    return json.loads(host.check_output(f"{PATRONICTL} list --format json"))


def leader(host: testinfra.host.Host) -> str | None:
    return next((m["Member"] for m in members(host) if m["Role"] == "Leader"), None)


def psql_as_service(host: testinfra.host.Host, sql: str) -> list[str]:
    """Rows (|-separated) of SQL run as the service (its user, its certificate) through
    SERVICE_DSN."""
    dsn, statement = shlex.quote(SERVICE_DSN), shlex.quote(sql)
    out = host.check_output(
        f"cd / && sudo -u {SERVICE_USER} psql --no-psqlrc -At {dsn} -c {statement}"
    )
    return out.splitlines()


def local_sql(host: testinfra.host.Host, sql: str) -> str:
    """SQL as postgres over HOST's unix socket (no network: works inside a partition)."""
    return host.check_output(f"cd / && sudo -u postgres psql --no-psqlrc -At -c {shlex.quote(sql)}")


def _sql_answer(host: testinfra.host.Host, sql: str) -> str | None:
    """local_sql's answer, or None while HOST's PostgreSQL (or HOST) does not answer."""
    result = _run(host, f"cd / && sudo -u postgres psql --no-psqlrc -At -c {shlex.quote(sql)}")
    return result.stdout.strip() if result and result.rc == 0 else None


def _run(host: testinfra.host.Host, command: str) -> testinfra.backend.base.CommandResult | None:
    """HOST's answer to COMMAND, or None while HOST cannot be reached (a killed lab
    host's SSH is down until its container runs again; testinfra raises then)."""
    try:
        return host.run(command)
    except RuntimeError:
        return None


def cluster_roles(hosts: dict) -> dict[str, str]:
    """{member: role} as the data nodes' PostgreSQL and Patroni both say it: "Leader"
    for the one primary, "Sync Standby" for a node streaming to it as its synchronous
    standby, otherwise what that node's PostgreSQL says (replica, down, primary).

    Patroni's member list alone is not enough: Patroni reads etcd serializably, so
    an etcd member that has just rejoined after a partition answers with the state
    from before it was cut off until it has caught up."""
    state = {"t": "replica", "f": "primary"}
    roles = {
        n: state.get(_sql_answer(hosts[n], "SELECT pg_is_in_recovery()") or "", "down")
        for n in DATA_NODES
    }
    primaries = [n for n, role in roles.items() if role == "primary"]
    if len(primaries) != 1:
        return roles
    (primary,) = primaries
    streaming = _sql_answer(
        hosts[primary],
        "SELECT application_name FROM pg_stat_replication"
        " WHERE state = 'streaming' AND sync_state = 'sync'",
    )
    listed = _run(hosts[primary], f"{PATRONICTL} list --format json")
    answered = listed is not None and listed.rc == 0
    patroni = {m["Member"]: m["Role"] for m in json.loads(listed.stdout)} if answered else {}
    if patroni.get(primary) == "Leader":
        roles[primary] = "Leader"
    for node in (streaming or "").split():
        if roles.get(node) == "replica" and patroni.get(node) == "Sync Standby":
            roles[node] = "Sync Standby"
    return roles


def healthy_leader(hosts: dict) -> str:
    """The leader of a healthy cluster (wait_healthy): every check that changes the
    cluster starts from one, whatever the check before it left behind."""
    return next(n for n, role in wait_healthy(hosts).items() if role == "Leader")


def wait_healthy(hosts: dict, timeout: float = 180) -> dict[str, str]:
    """Wait until the data nodes are a Patroni leader and its streaming synchronous
    standby (cluster_roles); return {member: role} (AssertionError with the last
    roles seen, Patroni's member list and the recent log of each node that is not
    the leader on timeout, so that a failure in CI says why)."""
    deadline, roles = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        roles = cluster_roles(hosts)
        if sorted(roles.values()) == ["Leader", "Sync Standby"]:
            return roles
        time.sleep(2)

    def said(node: str, command: str) -> str:
        answer = _run(hosts[node], command)
        return answer.stdout + answer.stderr if answer else f"{node} unreachable"

    listed = said(DATA_NODES[0], f"{PATRONICTL} list")
    logs = [
        f"--- patroni on {node}:\n" + said(node, "journalctl -u patroni -n 40 --no-pager -o cat")
        for node, role in roles.items()
        if role != "Leader"
    ]
    raise AssertionError(
        f"the cluster is not healthy after {timeout} s: {roles}\n{listed}\n" + "\n".join(logs)
    )


# A client of the database for the failover checks: inserts 1, 2, 3, ... through
# SERVICE_DSN, one row per commit, and prints "ok N T" once a commit returned (the
# acknowledgement) or "error N T NAME" when it failed, then retries the same row
# on a new connection (ON CONFLICT: a commit whose answer was lost is not doubled).
# Runs for at most its given seconds, or until the stop file exists.
WRITER = r"""
import os, sys, time
import psycopg2
dsn, table, seconds, stop = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
end, connection, n = time.monotonic() + seconds, None, 1
while time.monotonic() < end and not os.path.exists(stop):
    try:
        if connection is None:
            connection = psycopg2.connect(dsn)
            connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (id) VALUES (%s) ON CONFLICT DO NOTHING", (n,)
            )
        print(f"ok {n} {time.time():.3f}", flush=True)
        n += 1
        time.sleep(0.02)
    except psycopg2.Error as error:
        print(f"error {n} {time.time():.3f} {type(error).__name__}", flush=True)
        try:
            connection.close()
        except Exception:
            pass
        connection = None
        time.sleep(0.2)
"""

# Prints "TIME STATE" every 0.2 s, STATE being what the node's PostgreSQL says over
# the local socket: primary, replica, or down. Every container shares the lab
# machine's clock, so two nodes' samples compare in time.
SAMPLER = r"""
import sys, time
import psycopg2
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        with psycopg2.connect("dbname=postgres connect_timeout=1") as connection:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_is_in_recovery()")
                state = "replica" if cursor.fetchone()[0] else "primary"
        connection.close()
    except psycopg2.Error:
        state = "down"
    print(f"{time.time():.3f} {state}", flush=True)
    time.sleep(0.2)
"""


def run_script(
    host: testinfra.host.Host, unit: str, script: str, *args: str, user: str = "postgres"
) -> str:
    """Start SCRIPT as USER on HOST in a transient unit; its output file's path."""
    output = f"/tmp/{unit}.out"
    host.run(f"systemctl stop {unit} 2>/dev/null; rm -f {output}")
    quoted = " ".join(shlex.quote(a) for a in args)
    host.check_output(
        f"systemd-run --unit {unit} --collect -p User={user} -p WorkingDirectory=/tmp"
        f" -p StandardOutput=file:{output} python3 -c {shlex.quote(script)} {quoted}"
    )
    return output


class Load:
    """WRITER running on HOST into a table of its own, for at most 240 s."""

    def __init__(self, host: testinfra.host.Host) -> None:
        self.host = host
        self.table = f"failover_{uuid.uuid4().hex[:8]}"
        self.unit = f"securecore-test-{self.table}"
        self.stop_file = f"/tmp/{self.unit}.stop"

    def __enter__(self) -> Load:
        psql_as_service(self.host, f"CREATE TABLE {self.table} (id BIGINT PRIMARY KEY)")
        self.output = run_script(
            self.host,
            self.unit,
            WRITER,
            SERVICE_DSN,
            self.table,
            "240",
            self.stop_file,
            user=SERVICE_USER,
        )
        self.wait_for_acknowledgements(20)
        return self

    def lines(self) -> list[list[str]]:
        return [line.split() for line in self.host.file(self.output).content_string.splitlines()]

    def acknowledged(self) -> list[int]:
        return [int(fields[1]) for fields in self.lines() if fields[0] == "ok"]

    def wait_for_acknowledgements(self, count: int, timeout: float = 120) -> None:
        start, deadline = len(self.acknowledged()), time.monotonic() + timeout
        while len(self.acknowledged()) < start + count:
            assert time.monotonic() < deadline, f"no {count} writes within {timeout} s"
            time.sleep(0.5)

    def finish(self) -> dict:
        """Stop the writer; check every acknowledged row is in the database; the figures."""
        self.host.run(f"touch {self.stop_file}")
        for _ in range(60):
            if self.host.run(f"systemctl is-active --quiet {self.unit}").rc != 0:
                break
            time.sleep(0.5)
        acknowledged = self.acknowledged()
        query = f"SELECT id FROM {self.table}"
        stored = {int(row) for row in psql_as_service(self.host, query)}
        lost = sorted(set(acknowledged) - stored)
        lines = self.lines()
        times = [float(fields[2]) for fields in lines]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        return {
            "acknowledged": len(acknowledged),
            "lost": lost,
            "errors": sum(1 for fields in lines if fields[0] == "error"),
            "longest_wait": max(gaps, default=0.0),
        }

    def __exit__(self, *exc: object) -> None:
        self.host.run(f"touch {self.stop_file}; systemctl stop {self.unit} 2>/dev/null")
        self.host.run(f"rm -f {self.stop_file} {self.output}")
        # The table goes wherever the writable node is now.
        psql_as_service(self.host, f"DROP TABLE IF EXISTS {self.table}")


def podman(*args: str) -> None:
    """podman ARGS on the lab machine (the lab's containers are its hosts)."""
    subprocess.run(["podman", *args], check=True, capture_output=True, timeout=120)


def wait_for_leader(
    host: testinfra.host.Host, name: str, since: float, timeout: float = 90
) -> float:
    """Seconds from SINCE until NAME holds the leader lock (asked on HOST)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = host.run("cd / && sudo -u postgres patronictl -c /etc/patroni/config.yml list")
        if result.rc == 0 and leader(host) == name:
            return time.monotonic() - since
        time.sleep(0.5)
    raise AssertionError(f"{name} is not the leader {timeout} s after the failure")
