"""Body limits hold while a body is read, per route, before memory is spent.

Real TLS clients against a real `securecore serve`: declared and chunked
bodies over the limit, one per route and one from the configuration, and a
few hundred megabytes in flight at once while the server's resident memory is
measured from /proc.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.commands import ROOT
from tests.support.devserver import call, context, dev_server

POLICY = """
[client_limit]
rate = 1000
burst = 1000
"""
CONFIGURED = '\n[limits]\nroute_body_bytes = {"/v1/admin/acl/block" = 100}\n'
MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("limits") / "dev"
    with dev_server(directory, policy=POLICY, edit_config=lambda text: text + CONFIGURED) as up:
        yield up


def tls_socket(server) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server["port"]), timeout=20)
    return context(server["tls"]).wrap_socket(raw, server_hostname="localhost")


def read_answer(connection: ssl.SSLSocket) -> tuple[int | None, bytes, bool]:
    """(status or None, what was read, whether the server closed the connection)."""
    data = b""
    try:
        while chunk := connection.recv(65536):
            data += chunk
    except TimeoutError:
        return _status(data), data, False
    except (ConnectionError, ssl.SSLError, OSError):
        pass  # a reset: the server closed with our unread bytes in its buffer
    return _status(data), data, True


def _status(data: bytes) -> int | None:
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


def upload(server, path: str, size: int, *, chunked: bool, headers: str = "") -> tuple:
    """POST SIZE bytes to PATH, as fast as the server takes them; the answer (read_answer)."""
    connection = tls_socket(server)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{headers}{framing}\r\n\r\n"
    block = b"[" * 65536
    try:
        connection.sendall(head.encode())
        sent = 0
        while sent < size:
            piece = block[: size - sent]
            connection.sendall(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
        if chunked:
            connection.sendall(b"0\r\n\r\n")
    except (ConnectionError, ssl.SSLError, OSError):
        pass  # the server stopped reading and closed: what it answered is read below
    try:
        connection.settimeout(20)
        return read_answer(connection)
    finally:
        connection.close()


def test_a_declared_length_over_the_limit_is_refused_before_the_body(server) -> None:
    connection = tls_socket(server)
    head = b"POST /v1/sessions/refresh HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4097\r\n\r\n"
    connection.sendall(head)  # and no body at all: nothing is waited for
    status, data, closed = read_answer(connection)
    assert status == 413 and closed, data
    assert b"connection: close" in data.lower()
    assert b'"code":"payload_too_large"' in data
    assert b"POST /v1/sessions/refresh: the body is larger than 4096 bytes" in data


def test_a_chunked_body_is_counted_while_it_is_read(server) -> None:
    status, data, closed = upload(server, "/v1/sessions/refresh", 5000, chunked=True)
    assert (status == 413 or status is None) and closed, data
    # Within the limit it reaches the handler, whose schema answers.
    body = b'{"refresh_token": "' + b"r" * 4000 + b'"}'
    connection = tls_socket(server)
    connection.sendall(
        b"POST /v1/sessions/refresh HTTP/1.1\r\nHost: localhost\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    )
    connection.settimeout(5)
    status, data, _ = read_answer(connection)
    assert status == 422 and b"refresh_token: length 1-128" in data, data


def test_each_route_has_its_limit(server) -> None:
    _, pair = call(server, "POST", "/v1/sessions")
    bearer = f"Authorization: Bearer {pair['access_token']}\r\n"
    # A plugin call carries its arguments: 64 KiB by default.
    status, data, _ = upload(
        server, "/v1/plugins/example/call", 10_000, chunked=False, headers=bearer
    )
    assert status == 422 and b"nested deeper than 32 levels" in data, data  # read, then refused
    status, data, closed = upload(
        server, "/v1/plugins/example/call", 70_000, chunked=False, headers=bearer
    )
    assert status in (413, None) and closed, data
    # The configuration's own limit for one route; the others keep the default.
    status, answer = call(
        server, "POST", "/v1/admin/acl/block", body={"address": "192.0.2.1", "reason": "r" * 100}
    )
    assert status == 413 and "larger than 100 bytes" in answer["error"]["message"]
    status, answer = call(
        server, "POST", "/v1/admin/acl/unblock", body={"address": "192.0.2.1" + " " * 200}
    )
    assert status == 422, answer


def test_an_unknown_route_in_the_limits_is_a_configuration_error(server) -> None:
    bad = Path(server["config"]).with_name("bad-limits.toml")  # beside it: the same paths
    bad.write_text(Path(server["config"]).read_text().replace("acl/block", "nope"))
    proc = subprocess.run(
        [sys.executable, "-m", "securecore", "serve", "-c", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "[limits] route_body_bytes '/v1/admin/nope': no such route" in proc.stderr


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of PID, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def test_hundreds_of_megabytes_in_flight_leave_memory_bounded(server) -> None:
    pid = server["process"].pid
    call(server, "GET", "/v1/whoami")  # warm: every lazily built part exists
    # The peak resident set starts again from the current one (Linux clear_refs).
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = memory(pid)["VmRSS"]
    # 500 MB at once, to endpoints that need no token: declared and chunked.
    uploads = [
        ("/v1/sessions/refresh", True),
        ("/v1/sessions/refresh", False),
        ("/v1/plugins/register", True),
        ("/v1/plugins/register", False),
        ("/v1/sessions/refresh", True),
    ]
    answers: list = [None] * len(uploads)

    def send(index: int, path: str, chunked: bool) -> None:
        answers[index] = upload(server, path, 100 * MB, chunked=chunked)

    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(i, *u)) for i, u in enumerate(uploads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started
    grown = memory(pid)["VmHWM"] - before
    assert grown < 100 * MB, f"the server grew by {grown // MB} MB"
    for (path, chunked), (status, data, closed) in zip(uploads, answers, strict=True):
        assert status in (413, None) and closed, (path, chunked, data[:300])
    assert elapsed < 20, f"{elapsed:.1f} s"
    assert call(server, "GET", "/readyz")[0] == 200
