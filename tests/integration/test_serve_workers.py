"""Several worker processes: one service to the clients, one audit log, shared limits."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.commands import securecore
from tests.support.devserver import call, dev_server, scrape, whoami

POLICY = """
[client_limit]
rate = 0.001
burst = 12
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("workers") / "dev"
    with dev_server(directory, policy=POLICY, workers=2) as running:
        yield running


def worker_pids(server) -> set[int]:
    """The processes that answered requests, from the JSON access log.

    Only JSON lines count: at interpreter exit asyncio may still print a raw
    "Task was destroyed but it is pending!" once logging is shut down."""
    lines = server["log"].read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    return {e["pid"] for e in entries if e["logger"] == "uvicorn.access"}


def test_a_block_made_through_one_worker_holds_in_every_worker(server) -> None:
    # The operator works from 127.0.0.1, the blocked client comes from 127.0.0.2.
    # The ACL comes before the rate limit: refused requests take no tokens.
    securecore(
        "acl",
        "block",
        "127.0.0.2",
        "--minutes",
        "5",
        "--reason",
        "drill",
        "-c",
        str(server["config"]),
    )
    refused = [call(server, "GET", "/v1/whoami", source="127.0.0.2") for _ in range(8)]
    assert {status for status, _ in refused} == {403}
    assert {error["error"]["code"] for _, error in refused} == {"acl"}
    securecore("acl", "unblock", "127.0.0.2", "-c", str(server["config"]))
    assert call(server, "GET", "/v1/whoami", source="127.0.0.2")[0] == 200


def test_metrics_add_up_every_worker(server) -> None:
    response, text = scrape(server)
    assert response.status == 200
    counted = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("securecore_requests_total{")
    }
    # Every request so far, whichever worker answered it: the block and the
    # unblock, 8 refused by the ACL (before routing), 1 allowed.
    assert sum(counted.values()) == 11
    assert sum(n for labels, n in counted.items() if 'status="403"' in labels) == 8
    assert "securecore_up 1.0" in text


def test_requests_spread_over_both_workers_share_one_rate_limit(server) -> None:
    # 12 tokens, 4 taken before (block, unblock, the request after it, the
    # scrape; refusals by the ACL take none); a new connection for each request.
    statuses = [whoami(server).status for _ in range(20)]
    assert statuses == [200] * 8 + [429] * 12  # one bucket, whichever worker answers
    assert len(worker_pids(server)) == 2


def test_a_killed_worker_is_replaced(server) -> None:
    victim = sorted(worker_pids(server))[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        whoami(server, "/healthz")
        if len(worker_pids(server) - {victim}) == 2:
            break
        time.sleep(0.5)
    assert len(worker_pids(server) - {victim}) == 2, "no new worker answered"
    assert "starting another" in server["log"].read_text()


def test_the_local_admin_socket_is_served_by_the_workers_past_every_limit(server) -> None:
    # The administrator is over its rate limit by now; the local path is not limited.
    assert whoami(server).status == 429
    for _ in range(4):  # new connections: whichever worker accepts answers
        listed = securecore("acl", "list", "--local", "-c", str(server["config"]))
        assert json.loads(listed.stdout) == []
    path = server["config"].parent / "data" / "admin.sock"
    assert path.is_socket() and path.stat().st_mode & 0o777 == 0o600


def test_stopping_ends_every_process_and_the_audit_log_verifies(server) -> None:
    process = server["process"]
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    assert process.returncode == 0
    assert not (server["config"].parent / "data" / "admin.sock").exists()
    for pid in worker_pids(server):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    verified = securecore("audit", "verify", "-c", str(server["config"]))
    assert "audit log OK" in verified.stdout, verified.stdout
    exported = securecore("audit", "export", "-c", str(server["config"])).stdout.splitlines()
    records = [json.loads(line)["record"] for line in exported if '"type":"record"' in line]
    decisions = [r for r in records if r["action"].startswith("policy.")]
    assert sum(r["action"] == "policy.acl" and r["outcome"] == "denied" for r in decisions) == 8
    assert (
        sum(r["action"] == "policy.rate_limit" and r["outcome"] == "denied" for r in decisions)
        >= 12
    )
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))


def spawned_workers(pid: int) -> set[int]:
    """The worker processes PID started (multiprocessing's spawn_main)."""
    return processes_of(pid, b"spawn_main")


def processes_of(pid: int, command_part: bytes) -> set[int]:
    """PID's child processes whose command line holds COMMAND_PART (from /proc)."""
    found = set()
    for process in Path("/proc").glob("[0-9]*"):
        try:
            # pid (comm) state ppid ...: comm may hold spaces, so split after ")".
            parent = int((process / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (process / "cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        if parent == pid and command_part in command:
            found.add(int(process.name))
    return found


def running(pid: int) -> bool:
    """Whether PID is a process that has not ended (a zombie has: only its parent,
    whoever adopted it, has not collected it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_end_with_a_killed_supervisor_and_answer_nothing_meanwhile(tmp_path) -> None:
    """The supervisor holds the audit writer. Killed outright (SIGKILL: nothing graceful
    runs), its workers end with it at once: a client is cut off, never answered by a
    worker that can no longer record anything (a 503 an edge must not retry, where a
    cut connection tells it the request was never served). Fails when a worker
    outlives its supervisor, even for a second."""
    with dev_server(tmp_path / "dev", workers=2) as server:
        supervisor = server["process"]
        assert whoami(server).status == 200
        workers = spawned_workers(supervisor.pid)
        assert len(workers) == 2, workers
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(timeout=10)
        answered = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                answered.append(call(server, "GET", "/v1/whoami")[0])
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)  # refused or cut: what an edge retries elsewhere
        assert answered == [], answered
        alive = {pid for pid in workers if running(pid)}
        assert not alive, f"workers {alive} outlived their supervisor"


def test_a_stopped_supervisor_is_the_last_of_its_processes_to_end(tmp_path) -> None:
    """SIGTERM (systemctl stop): the workers end, then the supervisor, which first ends
    multiprocessing's resource tracker and waits for it. A process left behind
    would make a service manager that is not told when the service's cgroup
    empties (systemd in the lab's containers) wait out its whole stop timeout."""
    with dev_server(tmp_path / "dev", workers=2) as server:
        supervisor = server["process"]
        assert whoami(server).status == 200
        tracker = processes_of(supervisor.pid, b"resource_tracker")
        started = spawned_workers(supervisor.pid) | tracker
        assert len(started) == 3, started
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=40) == 0
        left = {pid for pid in started if Path(f"/proc/{pid}").exists()}
        assert not left, f"{left} outlived the supervisor"
