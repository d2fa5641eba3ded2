"""The DMZ edge relays its clients' identities, and only it can (REQ-EDGE-5, REQ-SVC-1).

A real `securecore serve` with `[edge] principals = ["dmz/dev-edge"]`, a CRL
in force and an ACL that denies 203.0.113.0/24; real TLS 1.3 clients on
loopback. The edge's connection presents tls/edge.pem and sends the headers
HAProxy would (`client-cert: :BASE64(DER):`, `x-forwarded-for: ADDRESS`);
everyone else sending them is ignored. What the edge relays is checked like a
handshake: certificates that are forged, expired, revoked, not for client
authentication or of the infrastructure are refused, and so is every header
that does not parse.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securecore_lab.devsetup import development_ca
from tests.integration.test_revocation_bound import BOUND, with_crl, write_crl
from tests.support.devserver import admin, context, dev_server

EDGE = "dmz/dev-edge"
ADMIN = "spiffe://securecore/admin/admin"  # the development administrator's identity
DENIED = "203.0.113.9"  # in the ACL's denied network
CLIENT_ADDRESS, OTHER_ADDRESS = "198.51.100.7", "198.51.100.8"
CLIENT_AUTH, SERVER_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH


@pytest.fixture(scope="module")
def edge_server(tmp_path_factory):
    site: dict = {}
    directory = tmp_path_factory.mktemp("edge") / "dev"

    def prepare(text: str) -> str:
        with_crl(directory, site)  # a CA whose key the tests keep, a CRL checked
        return text + f'\n[edge]\nprincipals = ["{EDGE}"]\n'

    policy = '[acl]\ndeny = ["203.0.113.0/24"]\n'
    with dev_server(directory, policy=policy, edit_config=prepare) as server:
        yield server, site


def send(
    server,
    path: str = "/v1/whoami",
    *,
    client: str = "edge",
    headers: Iterable[tuple[str, str]] = (),
    method: str = "GET",
    token: str | None = None,
) -> tuple[int, dict | None, str | None]:
    """One request from CLIENT (tls/CLIENT.pem) with HEADERS, repeated names kept:
    the status, the JSON answer and the audit-record receipt."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server["port"], context=context(server["tls"], client=client), timeout=10
    )
    try:
        connection.putrequest(method, path)
        for name, value in headers:
            connection.putheader(name, value)
        if token:
            connection.putheader("Authorization", f"Bearer {token}")
        connection.putheader("Content-Length", "0")
        connection.endheaders()
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None, response.getheader("audit-record")
    finally:
        connection.close()


def relayed(certificate: x509.Certificate) -> str:
    """The client-cert value HAProxy sends: `:%[ssl_c_der,base64]:`."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    return ":" + base64.b64encode(der).decode() + ":"


def on_disk(server, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((server["tls"] / f"{name}.pem").read_bytes())


def leaf(
    site: dict,
    uri: str | None = "spiffe://securecore/admin/carol",
    *,
    issuer: tuple | None = None,
    self_signed: bool = False,
    usages: list | None = None,
    days: tuple[int, int] = (-1, 30),
    ca: bool = False,
    name: str = "carol",
) -> x509.Certificate:
    """A client certificate issued by the site's CA (or ISSUER: (certificate, key)), for
    clientAuth unless USAGES says otherwise; nobody holds a file of it: the edge relays
    certificates, not keys."""
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_certificate, issuer_key = issuer or (site["ca"], site["ca_key"])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if self_signed else issuer_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usages != []:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(usages or [CLIENT_AUTH]), critical=False
        )
    if uri is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    return builder.sign(key if self_signed else issuer_key, hashes.SHA256())


def ca_name(site: dict) -> str:
    return site["ca"].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def exported_records(server) -> dict[int, dict]:
    exported = admin(server, "audit", "export").stdout.splitlines()
    return {
        line["seq"]: line["record"]
        for line in map(json.loads, exported)
        if line.get("type") == "record"
    }


# --- nobody but the edge -------------------------------------------------------------


@pytest.mark.parametrize("client", ["admin", "core", "plugin"])
def test_the_relay_headers_of_anyone_but_the_edge_are_ignored(edge_server, client) -> None:
    server, _ = edge_server
    # Another valid principal's certificate, and an address the ACL denies.
    other = on_disk(server, "plugin" if client == "admin" else "admin")
    headers = [("client-cert", relayed(other)), ("x-forwarded-for", DENIED)]
    status, body, receipt = send(server, client=client, headers=headers)
    assert status == 200, body
    assert body["fingerprint_sha256"] == on_disk(server, client).fingerprint(hashes.SHA256()).hex()
    assert "via" not in body
    # Its source is its own address: the ACL did not see the denied one, the log neither.
    record = exported_records(server)[int(receipt)]
    assert record["actor"] == f"{body['kind']}/{body['name']}"
    assert record["details"]["source"] == "127.0.0.1" and "via" not in record["details"]


def test_an_edge_the_configuration_does_not_name_relays_nothing(tmp_path: Path) -> None:
    with dev_server(tmp_path / "dev") as server:  # no [edge]: dmz/dev-edge is a client
        headers = [("client-cert", relayed(on_disk(server, "admin")))]
        status, body, _ = send(server, headers=headers)
        assert status == 200 and body["spiffe_id"] == f"spiffe://securecore/{EDGE}"
        assert "via" not in body


# --- what the edge relays ------------------------------------------------------------


def test_the_edge_relays_its_client_and_the_log_names_both(edge_server) -> None:
    server, _ = edge_server
    client = on_disk(server, "admin")
    headers = [("client-cert", relayed(client)), ("x-forwarded-for", CLIENT_ADDRESS)]
    status, body, receipt = send(server, headers=headers)
    assert status == 200, body
    assert body["spiffe_id"] == ADMIN
    assert body["fingerprint_sha256"] == client.fingerprint(hashes.SHA256()).hex()
    assert body["via"]["spiffe_id"] == f"spiffe://securecore/{EDGE}"
    record = exported_records(server)[int(receipt)]
    assert (record["actor"], record["outcome"]) == ("admin/admin", "allowed")
    assert record["details"]["source"] == CLIENT_ADDRESS
    assert record["details"]["via"] == EDGE

    # The ACL judges the client's address, not the edge's.
    status, body, _ = send(
        server, headers=[("client-cert", relayed(client)), ("x-forwarded-for", DENIED)]
    )
    assert status == 403 and body["error"]["code"] == "acl", body
    # Without x-forwarded-for, the source is the edge's connection.
    status, body, receipt = send(server, headers=[("client-cert", relayed(client))])
    assert status == 200 and body["name"] == "admin"
    assert exported_records(server)[int(receipt)]["details"]["source"] == "127.0.0.1"


def test_without_a_client_certificate_the_request_is_the_edges_own(edge_server) -> None:
    server, _ = edge_server
    # As HAProxy's health checks: no client-cert. An x-forwarded-for alone names nobody.
    status, body, receipt = send(server, headers=[("x-forwarded-for", DENIED)])
    assert status == 200, body
    assert body["spiffe_id"] == f"spiffe://securecore/{EDGE}" and "via" not in body
    record = exported_records(server)[int(receipt)]
    assert record["actor"] == EDGE and record["details"]["source"] == "127.0.0.1"
    assert "via" not in record["details"]


def test_a_session_made_through_the_edge_is_bound_to_the_relayed_certificate(
    edge_server,
) -> None:
    server, _ = edge_server
    client, other = on_disk(server, "admin"), on_disk(server, "plugin")
    through_edge = [("client-cert", relayed(client)), ("x-forwarded-for", CLIENT_ADDRESS)]
    status, pair, _ = send(server, "/v1/sessions", method="POST", headers=through_edge)
    assert status == 201, pair
    token = pair["access_token"]
    current = "/v1/sessions/current"
    status, session, _ = send(server, current, headers=through_edge, token=token)
    assert status == 200 and session["sub"] == "admin/admin", session
    # Relayed with another principal's certificate, or sent by the edge as itself: refused.
    as_other = [("client-cert", relayed(other)), ("x-forwarded-for", OTHER_ADDRESS)]
    for headers in (as_other, []):
        status, error, _ = send(server, current, headers=headers, token=token)
        assert status == 401 and error["error"]["code"] == "binding_mismatch", error
    # Directly, the token needs that same certificate: with another it is refused...
    status, error, _ = send(server, current, client="plugin", token=token)
    assert status == 401 and error["error"]["code"] == "binding_mismatch", error
    # ...with the client's own it is its holder's (the binding is the certificate's).
    status, session, _ = send(server, current, client="admin", token=token)
    assert status == 200 and session["session_id"] == pair["session_id"]
    # The failed login relayed is counted against that principal and its address, via the edge.
    failures = [
        r["details"]
        for r in exported_records(server).values()
        if r["action"] == "auth.failure" and r["actor"] == "plugin/example"
    ]
    assert {"code": "binding_mismatch", "source": OTHER_ADDRESS, "via": EDGE} in failures
    assert {"code": "binding_mismatch", "source": "127.0.0.1"} in failures  # directly


# --- what the edge may not relay -----------------------------------------------------


def refused_cases() -> dict:
    """name -> (certificate made from the site, the reason the refusal gives)."""
    return {
        # The administrator's subject and SAN, under the site CA's name with another key.
        "forged by a CA of the same name": (
            lambda site: leaf(site, ADMIN, name="admin", issuer=development_ca(ca_name(site))),
            "is not issued by a CA this site trusts",
        ),
        "self-signed": (
            lambda site: leaf(site, ADMIN, name="admin", self_signed=True),
            "is not issued by a CA this site trusts",
        ),
        "expired": (lambda site: leaf(site, days=(-30, -1)), "expired at"),
        "not yet valid": (lambda site: leaf(site, days=(1, 30)), "is not valid before"),
        "for servers only": (
            lambda site: leaf(site, usages=[SERVER_AUTH]),
            "is not for client authentication (no clientAuth extended key usage)",
        ),
        "without extended key usage": (
            lambda site: leaf(site, usages=[]),
            "is not for client authentication (no clientAuth extended key usage)",
        ),
        "a CA": (lambda site: leaf(site, ca=True), "is a CA certificate"),
        "of no principal": (
            lambda site: leaf(site, "spiffe://elsewhere/admin/carol"),
            "names no principal",
        ),
        "of a DMZ host": (
            lambda site: leaf(site, "spiffe://securecore/dmz/dmz-07"),
            "names dmz/dmz-07: an edge relays clients, not the infrastructure",
        ),
        "of the edge itself": (
            lambda site: x509.load_pem_x509_certificate((site["tls"] / "edge.pem").read_bytes()),
            f"names {EDGE}: an edge relays clients",
        ),
        "of a core host": (
            lambda site: leaf(site, "spiffe://securecore/core/core-01"),
            "names core/core-01: an edge relays clients",
        ),
        # The service's own client certificate: the local operator on the admin API.
        "of this core host": (
            lambda site: x509.load_pem_x509_certificate((site["tls"] / "core.pem").read_bytes()),
            "names core/localhost: an edge relays clients",
        ),
    }


@pytest.mark.parametrize("case", list(refused_cases()))
def test_a_certificate_that_fails_is_refused(edge_server, case) -> None:
    server, site = edge_server
    make, reason = refused_cases()[case]
    certificate = make(site)
    headers = [("client-cert", relayed(certificate)), ("x-forwarded-for", CLIENT_ADDRESS)]
    for path, method in (("/v1/whoami", "GET"), ("/v1/sessions", "POST")):
        status, body, receipt = send(server, path, method=method, headers=headers)
        assert status == 403, body
        assert body["error"]["code"] == "forwarded_identity_refused"
        assert f"(serial {certificate.serial_number:x}) {reason}" in body["error"]["message"]
        assert receipt is None  # no policy decision: nothing was allowed


def test_a_refusal_is_audited_with_the_edge_as_the_actor(edge_server) -> None:
    server, site = edge_server
    certificate = leaf(site, self_signed=True)
    status, body, _ = send(server, headers=[("client-cert", relayed(certificate))])
    assert status == 403, body
    records = [
        r
        for r in exported_records(server).values()
        if r["action"] == "edge.forwarded_identity"
        and body["error"]["message"] == r["details"]["reason"]
    ]
    assert len(records) == 1
    assert (records[0]["actor"], records[0]["outcome"]) == (EDGE, "denied")
    assert records[0]["details"]["code"] == "forwarded_identity_refused"


def test_a_relayed_certificate_revoked_on_disk_is_refused_within_the_bound(
    edge_server,
) -> None:
    server, site = edge_server
    certificate = leaf(site, "spiffe://securecore/admin/rita", name="rita")
    headers = [("client-cert", relayed(certificate))]
    status, pair, _ = send(server, "/v1/sessions", method="POST", headers=headers)
    assert status == 201, pair
    assert send(server, headers=headers)[0] == 200
    write_crl(site["tls"], site["ca"], site["ca_key"], [certificate.serial_number])  # no signal
    deadline = time.monotonic() + BOUND
    while (answer := send(server, headers=headers))[0] == 200:
        assert time.monotonic() < deadline, "a revoked certificate is still relayed"
        time.sleep(0.1)
    status, body, _ = answer
    assert status == 403 and body["error"]["code"] == "forwarded_identity_refused", body
    assert "is revoked (the CRL in force lists it)" in body["error"]["message"]
    # Its session, made through the edge, ended with it.
    status, live, _ = send(server, "/v1/admin/sessions", client="admin")
    assert status == 200 and pair["session_id"] not in {s["id"] for s in live}
    # The others go on.
    assert send(server, headers=[("client-cert", relayed(leaf(site)))])[0] == 200


# --- what does not parse -------------------------------------------------------------


def malformed_cases(good: str, junk: str) -> dict:
    """name -> (headers sent besides, the code, a part of the message)."""
    sf_binary = "not one RFC 9440 sf-binary"
    return {
        "no colons": ([("client-cert", good.strip(":"))], "identity", sf_binary),
        "PEM": ([("client-cert", "-----BEGIN CERTIFICATE-----")], "identity", sf_binary),
        "parameters": ([("client-cert", good + ";by=edge")], "identity", sf_binary),
        "a list in one line": ([("client-cert", f"{good}, {good}")], "identity", sf_binary),
        "two lines": (
            [("client-cert", good), ("client-cert", good)],
            "identity",
            "more than one value",
        ),
        "bad base64": ([("client-cert", ":" + good[1:6] + ":")], "identity", "not base64"),
        "not DER": ([("client-cert", junk)], "identity", "not a DER certificate"),
        "empty": ([("client-cert", "::")], "identity", "not a DER certificate"),
        "oversized": (
            [("client-cert", ":" + "A" * 20_000 + ":")],
            "identity",
            "20002 bytes, more than 16384",
        ),
        "two addresses in one line": (
            [("client-cert", good), ("x-forwarded-for", f"{CLIENT_ADDRESS}, 10.0.0.1")],
            "source",
            "not one IP address",
        ),
        "two address lines": (
            [
                ("client-cert", good),
                ("x-forwarded-for", CLIENT_ADDRESS),
                ("x-forwarded-for", "10.0.0.1"),
            ],
            "source",
            "more than one header",
        ),
        "a name": ([("client-cert", good), ("x-forwarded-for", "unknown")], "source", "'unknown'"),
        "a scoped address": (
            [("client-cert", good), ("x-forwarded-for", "fe80::1%eth0")],
            "source",
            "a scoped address",
        ),
    }


@pytest.mark.parametrize("case", list(malformed_cases(":x:", ":y:")))
def test_a_header_that_does_not_parse_is_refused(edge_server, case) -> None:
    server, _ = edge_server
    good = relayed(on_disk(server, "admin"))
    junk = ":" + base64.b64encode(b"not a certificate").decode() + ":"
    headers, which, message = malformed_cases(good, junk)[case]
    status, body, receipt = send(server, headers=headers)
    assert status == 400, body
    assert body["error"]["code"] == f"forwarded_{which}_malformed"
    assert message in body["error"]["message"]
    assert receipt is None
