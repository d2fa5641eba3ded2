"""Failover, partition, rejoin and switchover of the core tier's database, under a
load of acknowledged writes.

Each check changes the cluster (a killed host, a cut network, a new leader) and
leaves it healthy again: a running leader and a synchronous standby on one
timeline. The figures each one measures are printed (pytest -s shows them) and
asserted against the targets in docs/requirements.md (REQ-HA-4, REQ-HA-8).
"""

from __future__ import annotations

import itertools
import shlex
import subprocess
import time
import uuid

from tests.support.database import (
    ADDRESS,
    DATA_NODES,
    SAMPLER,
    SERVICE_DSN,
    WRITER,
    healthy_leader,
    leader,
    psql_as_service,
    run_script,
    wait_healthy,
)
from tests.support.labhosts import ROOT, lab_spec

SPEC = lab_spec()
NEW_PRIMARY_WITHIN = 30.0  # seconds from the loss of the primary (REQ-HA-4)


class Load:
    """WRITER running on HOST into a table of its own, for at most 240 s."""

    def __init__(self, host, hosts) -> None:
        self.host, self.hosts = host, hosts
        self.table = f"failover_{uuid.uuid4().hex[:8]}"
        self.unit = f"securecore-test-{self.table}"
        self.stop_file = f"/tmp/{self.unit}.stop"

    def __enter__(self) -> Load:
        psql_as_service(self.host, f"CREATE TABLE {self.table} (id BIGINT PRIMARY KEY)")
        self.output = run_script(
            self.host, self.unit, WRITER, SERVICE_DSN, self.table, "240", self.stop_file
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
        query = f"SELECT id FROM {self.table}"  # noqa: S608 - the test's own table name
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
    subprocess.run(["podman", *args], check=True, capture_output=True, timeout=120)


def wait_for_leader(host, name: str, since: float, timeout: float = 90) -> float:
    """Seconds from SINCE until NAME holds the leader lock (asked on HOST)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = host.run("cd / && sudo -u postgres patronictl -c /etc/patroni/config.yml list")
        if result.rc == 0 and leader(host) == name:
            return time.monotonic() - since
        time.sleep(0.5)
    raise AssertionError(f"{name} is not the leader {timeout} s after the failure")


def test_killing_the_primary_host_loses_no_acknowledged_write(hosts) -> None:
    primary = healthy_leader(hosts)
    survivor = next(n for n in DATA_NODES if n != primary)
    with Load(hosts[survivor], hosts) as load:
        killed = time.monotonic()
        podman("kill", SPEC.container_name(primary))
        try:
            promoted = wait_for_leader(hosts[survivor], survivor, killed)
        finally:
            # The lost host comes back by itself once its container runs again:
            # Patroni rejoins it as a replica (pg_rewind where its history forked).
            podman("start", SPEC.container_name(primary))
        roles = wait_healthy(hosts)
        rejoined = time.monotonic() - killed
        load.wait_for_acknowledgements(50)
        figures = load.finish()
    print(
        f"\nfailover: new primary {survivor} after {promoted:.1f} s; {primary} back as a"
        f" replica after {rejoined:.1f} s; {figures['acknowledged']} writes acknowledged,"
        f" {figures['errors']} failed attempts (retried), longest wait"
        f" {figures['longest_wait']:.1f} s, lost {len(figures['lost'])}"
    )
    assert promoted <= NEW_PRIMARY_WITHIN
    assert figures["lost"] == []
    assert roles[primary] == "Sync Standby"


def test_a_partitioned_primary_demotes_itself_before_another_is_promoted(hosts) -> None:
    primary = healthy_leader(hosts)
    other = next(n for n in DATA_NODES if n != primary)
    peers = ", ".join(ADDRESS[n] for n in ADDRESS if n != primary)
    cut = (
        "table inet securecore_test_partition {"
        f" chain input {{ type filter hook input priority -10; ip saddr {{ {peers} }} drop; }};"
        f" chain output {{ type filter hook output priority -10; ip daddr {{ {peers} }} drop; }};"
        " }"
    )
    samples = {
        n: run_script(hosts[n], "securecore-test-sampler", SAMPLER, "120") for n in DATA_NODES
    }
    time.sleep(2)
    started, started_at = time.monotonic(), time.time()
    hosts[primary].check_output(f"nft {shlex.quote(cut)}")
    try:
        promoted = wait_for_leader(hosts[other], other, started)
        # The old primary must have stepped down on its own, cut off as it is.
        deadline = time.monotonic() + 60
        while (
            hosts[primary]
            .run("cd / && sudo -u postgres psql -At -c 'SELECT pg_is_in_recovery()'")
            .stdout.strip()
            == "f"
        ):
            assert time.monotonic() < deadline, f"{primary} is still a primary, cut off"
            time.sleep(1)
    finally:
        hosts[primary].run("nft delete table inet securecore_test_partition")
    roles = wait_healthy(hosts)
    for node in DATA_NODES:
        hosts[node].run("systemctl stop securecore-test-sampler 2>/dev/null")
    states = {
        node: [line.split() for line in hosts[node].file(path).content_string.splitlines()]
        for node, path in samples.items()
    }
    last_as_primary = max(float(t) for t, state in states[primary] if state == "primary")
    first_as_primary = min(
        float(t) for t, state in states[other] if state == "primary" and float(t) > started_at
    )
    print(
        f"\npartition: {other} promoted after {promoted:.1f} s; {primary} last answered as a"
        f" primary {first_as_primary - last_as_primary:.1f} s before {other} first did"
    )
    # One clock (the containers share the lab machine's): never two primaries at once.
    assert last_as_primary < first_as_primary
    assert roles[primary] == "Sync Standby"


def test_a_switchover_is_planned_maintenance_without_a_lost_write(hosts) -> None:
    primary = healthy_leader(hosts)
    candidate = next(n for n in DATA_NODES if n != primary)
    with Load(hosts[candidate], hosts) as load:
        playbook = ROOT / "playbooks" / "switchover.yml"
        inventory = ROOT / "inventories" / "lab"
        command = ["ansible-playbook", "-i", str(inventory), str(playbook)]
        subprocess.run(
            [*command, "-e", f"switchover_candidate={candidate}"],
            check=True,
            capture_output=True,
            timeout=300,
            cwd=ROOT,
        )
        roles = wait_healthy(hosts)
        load.wait_for_acknowledgements(50)
        figures = load.finish()
    print(
        f"\nswitchover: {primary} -> {candidate}; {figures['errors']} failed attempts"
        f" (retried), longest wait {figures['longest_wait']:.1f} s"
    )
    assert figures["lost"] == []
    assert roles == {candidate: "Leader", primary: "Sync Standby"}
