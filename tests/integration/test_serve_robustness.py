"""No request can stop the service's audit writer; a writer that stops takes the service down.

Against real `securecore serve` processes (one process, and a supervisor with
two workers): values that are no Unicode text reach every field that ends in
an audit record; the writer is then broken by a real condition (another
process holds the audit database's write lock past SQLite's busy timeout, as
a stuck backup or an operator's sqlite3 shell would), and the service must
answer 503, say so on /readyz, exit non-zero for systemd to restart it, and
come back with a log that verifies.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.commands import securecore
from tests.support.devserver import call, dev_server, get, wait_for_port

# Generous limits: these tests send many requests from one client.
POLICY = """
[client_limit]
rate = 1000
burst = 1000
"""

# Every request field that reaches an audit record (or the registry beside
# it), each carrying a lone UTF-16 surrogate: json.dumps writes it as the
# escape "\\ud800", which a JSON parser turns into a string UTF-8 cannot hold.
LONE = "\ud800"
SURROGATE_REQUESTS = [
    (
        "/v1/plugins/register",
        {"name": LONE, "vendor": "acme", "endpoint": "https://127.0.0.1:9", "security_level": 3},
        "name",
    ),
    (
        "/v1/plugins/register",
        {
            "name": "example",
            "vendor": f"ac{LONE}me",
            "endpoint": "https://127.0.0.1:9",
            "security_level": 3,
        },
        "vendor",
    ),
    (
        "/v1/plugins/register",
        {"name": "example", "vendor": "acme", "endpoint": f"https://{LONE}:9", "security_level": 3},
        "endpoint",
    ),
    ("/v1/admin/sessions/revoke", {"principal": f"plugin/{LONE}"}, "principal"),
    ("/v1/admin/sessions/revoke", {"session_id": "s", "reason": "\udfff"}, "reason"),
    ("/v1/admin/acl/unblock", {"address": LONE}, "address"),
    ("/v1/admin/acl/block", {"address": "192.0.2.1", "reason": LONE}, "reason"),
    ("/v1/admin/plugins/example/suspend", {"reason": LONE}, "reason"),
    ("/v1/admin/recover", {"note": LONE}, "note"),
    ("/v1/admin/emergency-shutdown", {"reason": LONE}, "reason"),
    ("/v1/sessions/refresh", {"refresh_token": LONE}, "refresh_token"),
    ("/v1/sessions/refresh", {LONE: "x"}, "\\ud800"),
]


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def server(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"robust{request.param}") / "dev"
    with dev_server(directory, policy=POLICY, workers=request.param) as running:
        running["workers"] = request.param
        yield running


def test_no_request_stops_the_audit_writer(server) -> None:
    _, pair = call(server, "POST", "/v1/sessions")
    token = pair["access_token"]
    for path, body, field in SURROGATE_REQUESTS:
        status, answer = call(server, "POST", path, body=body)
        assert status == 422, (path, body, answer)
        assert answer["error"]["message"].startswith(field), answer
        assert "surrogate" in answer["error"]["message"]
    # Nested anywhere, in a call's arguments too (it reaches the plugin).
    nested = {"op": "tickets.create", "args": {"tags": ["ok", LONE]}}
    status, answer = call(server, "POST", "/v1/plugins/example/call", token=token, body=nested)
    assert status == 422 and answer["error"]["message"].startswith("args.tags[1]"), answer
    # The writer goes on: administrators (and everyone else) are answered.
    assert call(server, "GET", "/v1/admin/status")[0] == 200
    assert call(server, "GET", "/v1/sessions/current", token=token)[0] == 200
    assert get(server, "/readyz")[0] == 200


def stop(process: subprocess.Popen, expected: int) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    # uvicorn re-raises SIGTERM once it has shut down cleanly (one process).
    assert process.returncode in (expected, -signal.SIGTERM), process.returncode


def serve_again(server) -> subprocess.Popen:
    """`securecore serve` on SERVER's configuration and data, as systemd restarts it."""
    log = Path(server["log"]).open("a")  # noqa: SIM115 - closed with the process below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "securecore",
            "serve",
            "-c",
            str(server["config"]),
            "--workers",
            str(server["workers"]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    log.close()
    assert wait_for_port(server["port"]), Path(server["log"]).read_text()[-3000:]
    return process


# Last: it ends the module's server (and serves it again).
def test_a_writer_that_cannot_write_stops_the_service_which_recovers(server) -> None:
    assert call(server, "GET", "/v1/admin/status")[0] == 200
    database = Path(server["config"]).parent / "data" / "audit.db"
    # Another process takes the audit database's write lock and keeps it past
    # SQLite's busy timeout: the writer's next commit fails.
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        status, answer = call(server, "GET", "/v1/whoami")
        # Fail closed: the request whose record could not be made durable is refused.
        assert status == 503 and answer["error"]["code"] == "audit_unavailable", answer
        status, ready = get(server, "/readyz")
        assert status == 503 and ready["failed"]["audit_writer"] == "AuditError", ready
        # Nothing more is done: an administrator's action is refused too.
        status, answer = call(
            server, "POST", "/v1/admin/acl/block", body={"address": "192.0.2.7", "minutes": 5}
        )
        assert status == 503, answer
        # The whole service ends, workers included, non-zero: systemd's
        # Restart=on-failure starts it again.
        process = server["process"]
        process.wait(timeout=40)
        assert process.returncode == 1, process.returncode
        assert time.monotonic() - started < 40
    finally:
        holder.rollback()
        holder.close()
    text = Path(server["log"]).read_text()
    assert "the audit log writer stopped" in text
    # Every process that logged (the supervisor and its workers) has ended.
    for pid in {json.loads(line)["pid"] for line in text.splitlines() if line.startswith("{")}:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # Restarted on the same data: it recovers the log and serves again.
    process = serve_again(server)
    try:
        assert get(server, "/readyz")[0] == 200
        status, answer = call(
            server, "POST", "/v1/admin/acl/block", body={"address": "192.0.2.7", "minutes": 5}
        )
        assert status == 200, answer
    finally:
        stop(process, 0)
    verified = securecore("audit", "verify", "-c", str(server["config"]))
    assert "audit log OK" in verified.stdout, verified.stdout
    exported = securecore("audit", "export", "-c", str(server["config"])).stdout.splitlines()
    actions = [json.loads(line)["record"]["action"] for line in exported if '"record"' in line]
    assert "acl.block" in actions  # the refused block was never recorded; the later one was
    assert actions.count("acl.block") == 1
