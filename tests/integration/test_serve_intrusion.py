"""Automatic responses in the served request path, attacked as an insider would.

A real `securecore serve` with real mutual TLS clients: low-privilege
principals (certificates of a second CA in the bundle, as a site's pki role
issues them) try to turn the responses against the administrators who share
their address, try the admin API, and the administrators recover over the
local admin socket whatever was blocked. The tests run in order on one
server; the last stops it and reads the audit log.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securecore_lab.devsetup import development_ca
from tests.support.commands import securecore
from tests.support.devserver import admin, call, dev_server, with_certificate

# Low-privilege principals: NAME -> the URI their certificate carries.
PRINCIPALS = {
    "web-1": "spiffe://securecore/dmz/web-1",
    "web-2": "spiffe://securecore/dmz/web-2",
    "intruder": "spiffe://securecore/plugin/intruder",
}


def issue_clients(tls: Path) -> None:
    """A second CA joins the bundle and issues a client certificate per PRINCIPALS."""
    ca, ca_key = development_ca("SecureCore Test Clients CA")
    with (tls / "ca.pem").open("ab") as bundle:
        bundle.write(ca.public_bytes(serialization.Encoding.PEM))
    now = datetime.datetime.now(datetime.UTC)
    for name, uri in PRINCIPALS.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        (tls / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pkcs8 = serialization.PrivateFormat.PKCS8
        (tls / f"{name}.key").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ids") / "dev"

    def with_clients(text: str) -> str:
        issue_clients(directory / "tls")
        return text

    with dev_server(directory, edit_config=with_clients) as running:
        yield running


def bad_tokens(server, client: str, count: int = 5, source: str | None = None) -> None:
    for attempt in range(count):
        status, error = call(
            server,
            "POST",
            "/v1/sessions/refresh",
            client=client,
            source=source,
            body={"refresh_token": f"guessed-{client}-{attempt}"},
        )
        assert status == 401 and error["error"]["code"] == "invalid_refresh", (status, error)


def blocks(server, *options: str) -> list[dict]:
    return json.loads(admin(server, "acl", "list", *options).stdout)


def test_failing_principals_behind_one_address_are_locked_and_the_address_stays_open(
    server,
) -> None:
    # Two low-privilege principals share the administrators' address (127.0.0.1)
    # and send five bad tokens each: ten failures from one address in a minute.
    bad_tokens(server, "web-1")
    bad_tokens(server, "web-2")
    for client in ("web-1", "web-2"):
        status, error = call(server, "GET", "/v1/whoami", client=client)
        assert status == 403 and error["error"]["code"] == "intrusion"
        assert f"principal dmz/{client} is blocked: 5 failed logins" in error["error"]["message"]
    # The administrator on the same address keeps working, its admin API included.
    assert call(server, "GET", "/v1/whoami")[0] == 200
    found = blocks(server)
    assert {(b["kind"], b["subject"]) for b in found} == {
        ("principal", "dmz/web-1"),
        ("principal", "dmz/web-2"),
    }
    assert all(b["until"] is not None for b in found)  # these expire (15 minutes)
    # An administrator clears one principal's lock over mutual TLS.
    admin(server, "acl", "unblock", "--principal", "dmz/web-1")
    assert call(server, "GET", "/v1/whoami", client="web-1")[0] == 200
    assert call(server, "GET", "/v1/whoami", client="web-2")[0] == 403


def test_privilege_escalation_ends_the_session_and_no_new_one_until_an_operator_clears_it(
    server,
) -> None:
    status, pair = call(server, "POST", "/v1/sessions", client="intruder")
    assert status == 201
    status, error = call(server, "GET", "/v1/admin/acl", client="intruder")
    assert status == 403 and error["error"]["code"] == "forbidden"
    # No new session: the principal is locked, not just its session ended.
    status, error = call(server, "POST", "/v1/sessions", client="intruder")
    assert status == 403 and error["error"]["code"] == "intrusion", (status, error)
    message = error["error"]["message"]
    assert "principal plugin/intruder is blocked: privilege escalation attempt" in message
    lock = next(b for b in blocks(server) if b["subject"] == "plugin/intruder")
    assert lock["kind"] == "principal" and lock["until"] is None  # until cleared
    sessions = json.loads(admin(server, "sessions", "list").stdout)
    assert pair["session_id"] not in [s["id"] for s in sessions]
    # An operator clears it over the local path; the ended session stays ended.
    cleared = admin(
        server, "acl", "unblock", "--principal", "plugin/intruder", "--local", "--by", "alice"
    )
    assert json.loads(cleared.stdout) == {"unblocked": "plugin/intruder", "removed": 1}
    status, error = call(
        server, "GET", "/v1/sessions/current", client="intruder", token=pair["access_token"]
    )
    assert status == 401 and error["error"]["code"] == "revoked"
    assert call(server, "POST", "/v1/sessions", client="intruder")[0] == 201


def test_the_local_path_lists_and_clears_blocks_whatever_was_blocked(server) -> None:
    # Block everything possible: the administrator's identity is locked (from
    # another address), the local operator's certificate from the host itself
    # is locked, the host's address is blocked, and all traffic is stopped.
    bad_tokens(server, "admin", source="127.0.0.2")
    operator = with_certificate(server, "core")
    admin(server, "emergency-shutdown", "--reason", "drill", "--tls-policy", operator)
    admin(server, "acl", "block", "127.0.0.2", "--tls-policy", operator)
    admin(server, "acl", "block", "127.0.0.1", "--tls-policy", operator)
    for policy in (None, operator):
        refused = admin(
            server, "acl", "list", *(("--tls-policy", policy) if policy else ()), check=False
        )
        assert refused.returncode == 2 and "403" in refused.stderr, refused.stderr
    # The local path lists and clears it all.
    found = {(b["kind"], b["subject"]) for b in blocks(server, "--local")}
    assert {("principal", "admin/admin"), ("ip", "127.0.0.1"), ("ip", "127.0.0.2")} <= found
    status = json.loads(admin(server, "status", "--local").stdout)
    assert status["modes"]["shutdown"] == "on"
    admin(server, "acl", "unblock", "127.0.0.1", "--local", "--by", "bob")
    admin(server, "acl", "unblock", "127.0.0.2", "--local", "--by", "bob")
    admin(server, "acl", "unblock", "--principal", "admin/admin", "--local", "--by", "bob")
    admin(server, "recover", "--note", "blocks cleared", "--local", "--by", "bob")
    assert call(server, "GET", "/v1/whoami")[0] == 200
    assert call(server, "GET", "/v1/whoami", source="127.0.0.2")[0] == 200


def test_only_root_and_the_service_user_may_use_the_local_path(server) -> None:
    path = server["config"].parent / "data" / "admin.sock"
    assert path.stat().st_mode & 0o777 == 0o600
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another local user")
    # Even with the socket reachable and its mode opened up (a hard link outside
    # the 0700 data directory), the kernel names the caller: refused.
    with tempfile.TemporaryDirectory() as open_directory:
        Path(open_directory).chmod(0o755)
        link = Path(open_directory) / "admin.sock"
        os.link(path, link)
        path.chmod(0o666)
        try:
            script = (
                "import os, socket, sys\n"
                "os.setgid(65534); os.setuid(65534)\n"
                "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                "s.sendall(b'GET /v1/admin/acl HTTP/1.1\\r\\nHost: x\\r\\n"
                "Connection: close\\r\\n\\r\\n')\n"
                "answer = b''\n"
                "while chunk := s.recv(65536):\n"  # until the server closes: head and body
                "    answer += chunk\n"
                "print(answer.decode())\n"
            )
            other = subprocess.run(
                [sys.executable, "-c", script, str(link)],
                capture_output=True,
                text=True,
                timeout=30,
            )
        finally:
            path.chmod(0o600)
    assert other.returncode == 0, other.stderr
    assert other.stdout.startswith("HTTP/1.1 403") and "local operators only" in other.stdout


def test_a_second_service_cannot_take_the_local_path_over(server) -> None:
    second = securecore("serve", "-c", str(server["config"]), check=False)
    assert second.returncode == 2 and "another service is serving this admin socket" in (
        second.stderr
    )
    # The running service's socket still answers (dmz/web-2's lock is still in force).
    assert [b["subject"] for b in blocks(server, "--local")] == ["dmz/web-2"]


def test_each_automatic_response_is_audited_who_what_why_until_when(server) -> None:
    server["process"].terminate()
    server["process"].wait(timeout=20)
    exported = securecore("audit", "export", "-c", str(server["config"])).stdout.splitlines()
    records = [json.loads(line)["record"] for line in exported if '"type":"record"' in line]
    responses = [r for r in records if r["action"].startswith("intrusion.")]
    assert {(r["action"], r["target"]) for r in responses} == {
        ("intrusion.lock_principal", "dmz/web-1"),
        ("intrusion.lock_principal", "dmz/web-2"),
        ("intrusion.end_session", "plugin/intruder"),
        ("intrusion.lock_principal", "admin/admin"),
    }
    for record in responses:
        assert record["actor"] == "securecore" and record["outcome"] == "success"
        details = record["details"]
        assert details["reason"] and details["until"] and details["evidence"], record
    escalation = next(r for r in responses if r["action"] == "intrusion.end_session")
    assert escalation["details"]["kind"] == "principal"
    assert escalation["details"]["until"] == "until cleared by an operator"
    assert escalation["details"]["sessions_revoked"] == 1
    assert escalation["details"]["evidence"]["request"] == "GET /v1/admin/acl"
    lock = next(r for r in responses if r["target"] == "admin/admin")
    assert lock["details"]["evidence"]["source"] == "127.0.0.2"
    datetime.datetime.fromisoformat(lock["details"]["until"])
    assert [r for r in records if r["action"] == "auth.failure"].__len__() == 15
    unblocks = {(r["actor"], r["target"]) for r in records if r["action"] == "acl.unblock"}
    assert ("operator:alice@local/root", "plugin/intruder") in unblocks or os.geteuid() != 0
    assert {t for a, t in unblocks if a.startswith("operator:bob@local/")} == {
        "127.0.0.1",
        "127.0.0.2",
        "admin/admin",
    }
    assert any(
        r["action"] == "emergency.recover" and r["actor"].startswith("operator:bob@local/")
        for r in records
    )
    verified = securecore("audit", "verify", "-c", str(server["config"]))
    assert "audit log OK" in verified.stdout
