"""Requests to the lab's DMZ edge from the controller: an API client outside the site.

The controller holds the lab administrator's certificate (roles/pki makes its key
there) and reaches dmz-01's public port through podman's network, as a client
on the Internet would reach the edge. Each request is a fresh TLS 1.3
connection unless a connection is given.
"""

from __future__ import annotations

import datetime
import http.client
import json
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.labhosts import lab_spec

SPEC = lab_spec()
EDGE_HOST = next(h for h in SPEC.hosts if h.name == "dmz-01")
EDGE_ADDRESS = str(EDGE_HOST.address)
EDGE_PORT = 443
ROOT_CA = SPEC.state_dir / "pki-ca" / "root-ca.pem"
ADMIN = SPEC.state_dir / "admins" / "lab-admin"


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: object = None
    # Set when no HTTP answer came (TLS refusal, connection closed).
    refused: str | None = None

    @property
    def receipt(self) -> str | None:
        """The core's audit record number: present only when the core decided on it."""
        return self.headers.get("audit-record")


def client_context(certificate: Path | None = ADMIN, *, tls12: bool = False) -> ssl.SSLContext:
    """A client's TLS context trusting the site's root CA, with CERTIFICATE/client.pem
    and client.key (None: no client certificate)."""
    ctx = ssl.create_default_context(cafile=str(ROOT_CA))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if certificate is not None:
        ctx.load_cert_chain(str(certificate / "client.pem"), str(certificate / "client.key"))
    return ctx


def request(
    method: str,
    path: str,
    *,
    context: ssl.SSLContext | None = None,
    token: str | None = None,
    body: object = None,
    headers: dict[str, str] | None = None,
    raw_body: bytes | None = None,
    timeout: float = 20,
) -> Answer:
    """One request to the edge on a new connection."""
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    data = raw_body
    if body is not None:
        data = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    connection = http.client.HTTPSConnection(
        EDGE_ADDRESS, EDGE_PORT, context=context or client_context(), timeout=timeout
    )
    try:
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        payload = response.read()
    except (ssl.SSLError, OSError, http.client.HTTPException) as error:
        return Answer(0, refused=f"{type(error).__name__}: {error}")
    finally:
        connection.close()
    try:
        decoded: object = json.loads(payload) if payload else None
    except ValueError:
        decoded = payload.decode(errors="replace")
    return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, decoded)


def raw_exchange(data: bytes, context: ssl.SSLContext | None = None, timeout: float = 10) -> bytes:
    """DATA written as is on a TLS connection to the edge; everything read back until
    the edge closes it (for requests no HTTP client library would send)."""
    with (
        socket.create_connection((EDGE_ADDRESS, EDGE_PORT), timeout=timeout) as raw,
        (context or client_context()).wrap_socket(raw, server_hostname=EDGE_ADDRESS) as tls,
    ):
        tls.sendall(data)
        answer = b""
        try:
            while chunk := tls.recv(65536):
                answer += chunk
        except (TimeoutError, ssl.SSLError, OSError):
            pass
        return answer


def forged_client(directory: Path, spiffe_id: str = "spiffe://securecore/admin/lab-admin") -> Path:
    """A client certificate and key in DIRECTORY (client.pem, client.key) under the
    site's names - CA names, subject, URI SAN, clientAuth - from a CA of the forger's
    own: what someone without the site CA's key can make."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SecureCore Intermediate CA")])
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.rsplit("/", 1)[1])])
    names = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(names, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "client.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "client.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory
