"""Certificates, CA and CRL rotated while the service serves: SIGHUP, no downtime.

A new CA is added to the bundle (a CA rollover), the server and client
certificates are issued again from it, and the running service is sent
SIGHUP (what `systemctl reload securecore` does). Established connections
carry on; the next handshake presents the new certificate; a reload that
cannot load its files changes nothing. Real TLS on loopback, real processes.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
from pathlib import Path

from cryptography import x509

from tests.support.devserver import (
    admin,
    context,
    dev_server,
    file_serial,
    reload_and_wait,
    roll_over,
)


def served_serial(server, *, server_name: str | None = "localhost") -> int:
    """The serial of the certificate a new handshake presents (SNI sent or not)."""
    ctx = context(server["tls"])
    ctx.check_hostname = server_name is not None
    with (
        socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def signal_only(directory: Path):
    """dev_server's edit_config: the policy's watcher looks only every 60 s, so that
    what these tests see is the reload signal's doing (test_revocation_bound
    covers the watcher)."""

    def edit(text: str) -> str:
        policy = json.loads((directory / "tls" / "policy.json").read_text())
        (directory / "tls" / "policy.json").write_text(json.dumps({**policy, "watch_seconds": 60}))
        return text

    return edit


def reload_records(server) -> list[dict]:
    exported = admin(server, "audit", "export").stdout.splitlines()
    records = [json.loads(line) for line in exported if "service.tls_reload" in line]
    return [r["record"] for r in records]


def test_a_reload_serves_the_new_certificate_and_keeps_connections(tmp_path: Path) -> None:
    with dev_server(tmp_path / "dev", edit_config=signal_only(tmp_path / "dev")) as server:
        tls = server["tls"]
        before = served_serial(server)
        assert before == file_serial(tls / "server.pem")
        kept = http.client.HTTPSConnection(
            "127.0.0.1", server["port"], context=context(tls), timeout=10
        )
        kept.request("GET", "/healthz")
        assert kept.getresponse().read() == b'{"status":"ok"}'
        old_admin = tmp_path / "old-admin"
        old_admin.mkdir()
        for suffix in ("pem", "key"):
            shutil.copy(tls / f"admin.{suffix}", old_admin / f"admin.{suffix}")

        roll_over(tls, "server", "admin", "core")
        assert served_serial(server) == before  # not yet looked at (every 60 s here)
        reload_and_wait(server, "TLS reloaded")

        after = file_serial(tls / "server.pem")
        assert after != before
        assert served_serial(server) == after
        assert served_serial(server, server_name=None) == after  # a client sending no SNI
        kept.request("GET", "/healthz")  # the connection made before the reload goes on
        assert kept.getresponse().read() == b'{"status":"ok"}'
        kept.close()
        # Clients of the new CA and of the old one are both accepted (the bundle has both).
        for client_tls in (tls, old_admin):
            ctx = context(client_tls) if client_tls == tls else context(tls, client=None)
            if client_tls != tls:
                ctx.load_cert_chain(str(old_admin / "admin.pem"), str(old_admin / "admin.key"))
            connection = http.client.HTTPSConnection("127.0.0.1", server["port"], context=ctx)
            connection.request("GET", "/v1/whoami")
            assert json.loads(connection.getresponse().read())["name"] == "admin"
            connection.close()
        [record] = reload_records(server)
        assert record["outcome"] == "success"
        assert record["details"]["serial"] == format(after, "x")


def test_a_reload_that_cannot_load_its_files_keeps_the_current_certificate(
    tmp_path: Path,
) -> None:
    with dev_server(tmp_path / "dev", edit_config=signal_only(tmp_path / "dev")) as server:
        tls = server["tls"]
        before = served_serial(server)
        roll_over(tls, "server")
        (tls / "server.key").write_text("-----BEGIN PRIVATE KEY-----\nbroken\n")
        reload_and_wait(server, "TLS reload failed")
        assert served_serial(server) == before
        [record] = reload_records(server)
        assert record["outcome"] == "failure" and "server_key" in record["details"]["error"]
        assert server["process"].poll() is None


def test_a_supervisor_passes_the_reload_to_every_worker(tmp_path: Path) -> None:
    with dev_server(
        tmp_path / "dev", workers=2, edit_config=signal_only(tmp_path / "dev")
    ) as server:
        tls = server["tls"]
        roll_over(tls, "server")
        reload_and_wait(server, "TLS reloaded", count=2)
        after = file_serial(tls / "server.pem")
        # New connections land on either worker: every one presents the new certificate.
        assert {served_serial(server) for _ in range(12)} == {after}
        assert len(reload_records(server)) == 2
        assert "ended with" not in server["log"].read_text()  # no worker died of it
