"""The edge's relayed certificates on the site's own PKI shape: a root in ca_file and an
intermediate, in this host's chain, that issues the leaves and the CRL (roles/pki).
tests/integration/test_edge_identity.py tests the rest against a real server."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securecore.server.forwarded import EdgeTrust, ForwardedIdentityError
from securecore.server.identity import principal_of
from securecore.tls import ReloadableServerContext

NOW = datetime.datetime.now(datetime.UTC)
PEM = serialization.Encoding.PEM


def issue(issuer, name: str, *, ca: bool = False, uri: str | None = None, dns: str | None = None):
    """(certificate, key) of NAME, issued by ISSUER ((certificate, key); None: self-signed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_certificate, issuer_key = issuer or (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_certificate.subject if issuer_certificate else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), True)
    )
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if dns else ExtendedKeyUsageOID.CLIENT_AUTH
        names = [x509.DNSName(dns)] if dns else [x509.UniformResourceIdentifier(uri or "")]
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
        builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def private_pem(key) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture
def site(tmp_path: Path) -> dict:
    root = issue(None, "Site Root CA", ca=True)
    intermediate = issue(root, "Site Intermediate CA", ca=True)
    server = issue(intermediate, "core-01", dns="localhost")
    (tmp_path / "ca.pem").write_bytes(root[0].public_bytes(PEM))
    chain = server[0].public_bytes(PEM) + intermediate[0].public_bytes(PEM)
    (tmp_path / "server.pem").write_bytes(chain)
    (tmp_path / "server.key").write_bytes(private_pem(server[1]))
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(intermediate[0].subject)
        .last_update(NOW - datetime.timedelta(minutes=1))
        .next_update(NOW + datetime.timedelta(days=7))
        .sign(intermediate[1], hashes.SHA256())
    )
    (tmp_path / "crl.pem").write_bytes(crl.public_bytes(PEM))
    policy = {
        "ca_file": str(tmp_path / "ca.pem"),
        "crl_file": str(tmp_path / "crl.pem"),
        "crl_check": "leaf",
        "server_certificate": str(tmp_path / "server.pem"),
        "server_key": str(tmp_path / "server.key"),
    }
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    tls = ReloadableServerContext(tmp_path / "policy.json")
    edge_certificate, _ = issue(intermediate, "dmz-01", uri="spiffe://securecore/dmz/dmz-01")
    return {
        "root": root,
        "intermediate": intermediate,
        "edge": principal_of(edge_certificate, "securecore"),
        "trust": EdgeTrust(["dmz/dmz-01"], tls, "securecore"),
    }


def relay(site: dict, certificate: x509.Certificate):
    value = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER))
    headers = [(b"client-cert", b":" + value + b":"), (b"x-forwarded-for", b"192.0.2.10")]
    return site["trust"].resolve(site["edge"], headers, "10.1.100.10")


def test_a_leaf_of_the_intermediate_in_this_hosts_chain_is_relayed(site: dict) -> None:
    client, _ = issue(site["intermediate"], "alice", uri="spiffe://securecore/admin/alice")
    caller = relay(site, client)
    assert (caller.principal.id, caller.source, caller.via) == (
        "admin/alice",
        "192.0.2.10",
        site["edge"],
    )


def test_an_intermediate_this_host_does_not_hold_is_not_brought_in_by_the_edge(
    site: dict,
) -> None:
    """The edge relays a leaf, never a chain: a CA the root issued but this host's
    own chain does not carry is not one the edge can make it trust."""
    other = issue(site["root"], "Site Intermediate CA", ca=True)  # same name, another key
    client, _ = issue(other, "alice", uri="spiffe://securecore/admin/alice")
    with pytest.raises(ForwardedIdentityError, match="not issued by a CA this site trusts"):
        relay(site, client)


def test_a_leaf_of_the_root_has_no_crl_of_its_issuer(site: dict) -> None:
    """As the handshake (crl_check leaf): the CRL in force is the intermediate's."""
    client, _ = issue(site["root"], "alice", uri="spiffe://securecore/admin/alice")
    with pytest.raises(ForwardedIdentityError, match="has no CRL of its issuer in force"):
        relay(site, client)


def test_only_the_configured_edges_are_trusted(site: dict) -> None:
    trust = site["trust"]
    assert trust.trusts(site["edge"])
    other_edge, _ = issue(site["intermediate"], "dmz-02", uri="spiffe://securecore/dmz/dmz-02")
    assert not trust.trusts(principal_of(other_edge, "securecore"))
