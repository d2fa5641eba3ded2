"""The identity middleware: only a verified certificate's spiffe:// URI names a caller."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from securecore.server.admin_routes import AdminActions
from securecore.server.app import create_app
from securecore.server.identity import IdentityError, principal_from_scope


def certificate(*uris: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if uris:
        names = [x509.UniformResourceIdentifier(uri) for uri in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def scope(path: str, pem: str | None, headers=()) -> dict:
    value = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    if pem is not None:
        value["extensions"] = {"tls": {"client_cert_chain": [pem]}}
    return value


def call(request_scope: dict, **options) -> tuple[int, bytes]:
    app = create_app(trust_domain="securecore", **options)
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(request_scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize(
    ("uris", "message"),
    [
        ((), "no subject alternative names"),
        (("spiffe://other-domain/admin/x",), "exactly one spiffe://securecore/... URI"),
        (("spiffe://securecore/root/x",), "not KIND/NAME"),
        (("spiffe://securecore/admin/a", "spiffe://securecore/admin/b"), "exactly one"),
    ],
)
def test_certificates_that_name_no_principal_are_refused(uris, message) -> None:
    with pytest.raises(IdentityError, match=message):
        principal_from_scope(scope("/v1/whoami", certificate(*uris)), "securecore")
    status, body = call(scope("/v1/whoami", certificate(*uris)))
    assert status == 403 and b'"identity_unknown"' in body


def test_headers_never_make_an_identity() -> None:
    forged = [(b"x-forwarded-client-cert", b"URI=spiffe://securecore/admin/root")]
    status, body = call(scope("/v1/whoami", None, forged))
    assert status == 403 and b"no verified client certificate" in body


def test_a_good_certificate_names_its_principal(tmp_path: Path) -> None:
    status, body = call(scope("/v1/whoami", certificate("spiffe://securecore/plugin/plugin-01")))
    assert status == 200 and b'"kind":"plugin"' in body and b'"name":"plugin-01"' in body


def test_the_monitoring_principal_reads_metrics_and_nothing_else() -> None:
    from securecore.monitoring.metrics import ServiceMetrics

    prometheus = certificate("spiffe://securecore/monitoring/mgmt-01")
    status, body = call(scope("/metrics", prometheus), metrics=ServiceMetrics())
    assert status == 200 and b"securecore_up" in body
    status, _ = call(scope("/readyz", prometheus))
    assert status in (200, 503)  # the open paths answer any verified client
    for path in ("/v1/whoami", "/v1/sessions", "/v1/admin/status", "/openapi.json"):
        status, body = call(scope(path, prometheus), metrics=ServiceMetrics())
        assert status == 403 and b"monitoring principals read /metrics only" in body, path


@pytest.mark.parametrize(
    ("spiffe_id", "expected"),
    [
        ("spiffe://securecore/monitoring/mgmt-01", 200),
        ("spiffe://securecore/admin/alice", 200),
        ("spiffe://securecore/plugin/plugin-01", 403),
        ("spiffe://securecore/core/core-02", 403),
        ("spiffe://securecore/dmz/dmz-01", 403),
    ],
)
def test_only_the_monitoring_and_administrators_read_metrics(spiffe_id, expected) -> None:
    """REQ-MON-9: the series map the site's plugins, principals and audit log."""
    from securecore.monitoring.metrics import ServiceMetrics

    status, body = call(scope("/metrics", certificate(spiffe_id)), metrics=ServiceMetrics())
    assert status == expected, body
    if expected == 403:
        assert b"monitoring and administrators only" in body and b"securecore_" not in body


def test_only_administrators_reach_the_admin_api() -> None:
    untouched = AdminActions(
        audit=None,
        sessions=None,
        policy_state=None,
        registry=None,
        snapshot=None,
        status=lambda: {"called": True},
    )
    plugin = certificate("spiffe://securecore/plugin/plugin-01")
    status, body = call(scope("/v1/admin/status", plugin), admin=untouched)
    assert status == 403 and b"administrators only" in body
    operator = certificate("spiffe://securecore/admin/alice")
    status, body = call(scope("/v1/admin/status", operator), admin=untouched)
    assert status == 200 and body == b'{"called":true}'


def test_a_non_administrator_on_the_admin_api_loses_its_sessions(tmp_path: Path) -> None:
    from securecore.policy.intrusion import IntrusionDetector
    from securecore.policy.state import PolicyState
    from securecore.server.intrusion_hooks import IntrusionResponder
    from securecore.sessions.manager import SessionManager
    from tests.support.keyrings import software_ring

    sessions = SessionManager(software_ring(tmp_path), tmp_path / "sessions.db")
    pair = sessions.create("plugin/plugin-01")
    audited: list = []
    responder = IntrusionResponder(
        IntrusionDetector(PolicyState(tmp_path / "policy.db")),
        sessions,
        lambda *record: audited.append(record),
    )
    untouched = AdminActions(
        audit=None,
        sessions=None,
        policy_state=None,
        registry=None,
        snapshot=None,
        status=lambda: {},
    )
    plugin = certificate("spiffe://securecore/plugin/plugin-01")
    status, _ = call(
        scope("/v1/admin/status", plugin), admin=untouched, sessions=sessions, intrusion=responder
    )
    assert status == 403
    assert audited[-1][1] == "intrusion.end_session" and audited[-1][2] == "plugin/plugin-01"
    with pytest.raises(Exception, match="revoked"):
        sessions.verify(pair.access_token)
