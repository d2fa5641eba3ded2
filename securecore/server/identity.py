"""Who is calling: the principal named by the verified client certificate.

Site certificates (roles/pki, `securecore-lab init`) carry a URI SAN
spiffe://TRUST_DOMAIN/KIND/NAME - admin/NAME, core/HOST, plugin/HOST,
dmz/HOST, and monitoring/HOST (the site's Prometheus, which reads /metrics and
nothing else: identity_middleware.MONITORING_PATHS). Nothing else (headers,
subject CN alone) names a principal; the one
header that can, a client's certificate relayed by the DMZ edge, is read from
edge principals only and checked like a handshake's (forwarded.py, REQ-EDGE-5).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from securecore.errors import SecureCoreError

KINDS = ("admin", "core", "plugin", "dmz", "monitoring")
PRINCIPAL_ID = f"KIND/NAME with KIND one of {', '.join(KINDS)}"


class IdentityError(SecureCoreError):
    """The certificate names no principal of this site."""


@dataclass(frozen=True)
class Principal:
    kind: str
    name: str
    spiffe_id: str
    subject: str
    serial: str
    fingerprint: str

    # Cached: a principal is made once per certificate (principal_from_certificate)
    # and asked for these on every request.
    @functools.cached_property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"

    @functools.cached_property
    def thumbprint(self) -> str:
        """RFC 8705 x5t#S256: base64url SHA-256 of the certificate (binds tokens to it)."""
        return base64.urlsafe_b64encode(bytes.fromhex(self.fingerprint)).rstrip(b"=").decode()

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "spiffe_id": self.spiffe_id,
            "subject": self.subject,
            "serial": self.serial,
            "fingerprint_sha256": self.fingerprint,
        }


def principal_from_scope(scope: Mapping[str, Any], trust_domain: str) -> Principal:
    tls = scope.get("extensions", {}).get("tls")
    if not tls or not tls.get("client_cert_chain"):
        raise IdentityError("no verified client certificate on this connection")
    return principal_from_certificate(tls["client_cert_chain"][0], trust_domain)


def split_principal_id(value: str) -> tuple[str, str] | None:
    """KIND/NAME -> (KIND, NAME); None if VALUE is not PRINCIPAL_ID."""
    parts = value.split("/")
    if len(parts) != 2 or parts[0] not in KINDS or not parts[1]:
        return None
    return parts[0], parts[1]


# Parsing a certificate costs more than the rest of a request's identity
# check; the principal depends on the certificate's bytes only (the chain and
# its revocation were checked in the handshake), so it is kept per certificate.
@functools.lru_cache(maxsize=4096)
def principal_from_certificate(pem: str, trust_domain: str) -> Principal:
    return principal_of(x509.load_pem_x509_certificate(pem.encode()), trust_domain)


def principal_of(cert: x509.Certificate, trust_domain: str) -> Principal:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as error:
        raise IdentityError("the client certificate has no subject alternative names") from error
    prefix = f"spiffe://{trust_domain}/"
    ids = [
        uri
        for uri in sans.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(prefix)
    ]
    if len(ids) != 1:
        raise IdentityError(f"the client certificate must carry exactly one {prefix}... URI")
    parsed = split_principal_id(ids[0][len(prefix) :])
    if parsed is None:
        raise IdentityError(f"{ids[0]}: not {PRINCIPAL_ID}")
    return Principal(
        kind=parsed[0],
        name=parsed[1],
        spiffe_id=ids[0],
        subject=cert.subject.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
    )
