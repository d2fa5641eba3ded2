"""The client identity the DMZ edge relays, trusted from the edge only (REQ-EDGE-5).

The edge (HAProxy on the DMZ hosts) terminates the clients' mutual TLS and
connects to the core with a certificate of its own (dmz/HOST). On every
request it sets two headers, overwriting whatever the client sent:

    client-cert: :BASE64:       the client's verified leaf certificate, DER, as an
                                RFC 9440 sf-binary (HAProxy `:%[ssl_c_der,base64]:`)
    x-forwarded-for: ADDRESS    the client's source address, one IP address (`%[src]`)

Only from a connection whose certificate names a principal of `[edge]
principals` are they read at all. From any other principal both are ignored:
the identity is the connection's own certificate and the source its peer
(REQ-SVC-1). From an edge without client-cert, the request is the edge's own
(its health checks): the edge's identity, the peer's address.

The edge is trusted to relay, not to invent: the certificate it forwards is
checked here as the handshake checks a client's - issued by a CA of the TLS
policy (ca_file, or the site's intermediate in this host's own chain), valid
now, for clientAuth, not a CA, not revoked by the CRL in force, naming a
principal - and it may not name a host of the infrastructure (FORBIDDEN_KINDS,
the local operators' certificates). A header that does not parse answers 400
(forwarded_identity_malformed, forwarded_source_malformed); a certificate
refused answers 403 (forwarded_identity_refused) with what failed.

Parsing a certificate is cached per header value; what can change while the
service runs - the CAs, the CRL, the time - is checked on every request.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from securecore.errors import SecureCoreError
from securecore.server.identity import IdentityError, Principal, principal_of
from securecore.tls import ReloadableServerContext, TLSPolicy, is_ca, issued_by

CLIENT_CERT, FORWARDED_FOR = b"client-cert", b"x-forwarded-for"
# A leaf of this site is under 2 KiB; the bound keeps a header (and the cache of
# parsed certificates) small whatever an edge sends.
MAX_HEADER_BYTES = 16 * 1024
# RFC 8941 sf-binary: ":" standard base64 ":", no parameters (RFC 9440 defines none).
SF_BINARY = re.compile(rb":([A-Za-z0-9+/]*={0,2}):")
# An edge relays clients, never the infrastructure. A core host's identity reads the
# audit log (replication) and is the local operator on the admin API; a DMZ host's
# would let one edge speak for another (or relay for itself twice over), a chain of
# trust nobody configured. A client whose stolen or replayed certificate names either
# gains nothing by going through the edge; the certificates the service itself acts
# with as a local operator (`operators`, fingerprints) are refused for the same reason.
FORBIDDEN_KINDS = frozenset({"core", "dmz", "monitoring"})
MALFORMED, SOURCE_MALFORMED = "forwarded_identity_malformed", "forwarded_source_malformed"
REFUSED = "forwarded_identity_refused"


class ForwardedIdentityError(SecureCoreError):
    """The edge relayed an identity that does not parse (400) or is refused (403)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Caller:
    """Who a request is from: the principal, its address, and the edge that relayed it."""

    principal: Principal
    source: str
    via: Principal | None = None


@dataclass(frozen=True)
class Forwarded:
    """What a forwarded certificate says that does not change while the service runs."""

    certificate: x509.Certificate
    principal: Principal | None
    unnamed: str  # why it names no principal, when it names none
    client_auth: bool
    ca: bool


class EdgeTrust:
    """The edges of `[edge] principals`, and the checks of what they relay.

    TLS is the serving context (its policy's CAs and the CRL in force are read
    per request); OPERATORS the fingerprints of the local operators' certificates,
    kept up to date by serve.py; AUDIT an async AuditLog.append, for refusals."""

    def __init__(
        self,
        principals: Iterable[str],
        tls: ReloadableServerContext,
        trust_domain: str,
        *,
        operators: AbstractSet[str] = frozenset(),
        audit: Callable[..., Awaitable[Any]] | None = None,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self.principals = frozenset(principals)
        self.tls, self.trust_domain, self.operators = tls, trust_domain, operators
        self.audit, self.clock = audit, clock
        self._issuers: tuple[TLSPolicy | None, tuple[x509.Certificate, ...]] = (None, ())

    def trusts(self, principal: Principal) -> bool:
        return principal.id in self.principals

    def resolve(self, edge: Principal, headers: Iterable[tuple[bytes, bytes]], peer: str) -> Caller:
        """The caller of a request EDGE (trusted) sent from PEER with HEADERS;
        ForwardedIdentityError if what it relays does not parse or is refused."""
        certificates, sources = [], []
        for name, value in headers:
            if name == CLIENT_CERT:
                certificates.append(value)
            elif name == FORWARDED_FOR:
                sources.append(value)
        if not certificates:
            return Caller(edge, peer)
        if len(certificates) != 1:
            raise ForwardedIdentityError(400, MALFORMED, "client-cert: more than one value")
        forwarded = _parse(certificates[0], self.trust_domain)
        source = _source(sources, peer)
        return Caller(self._verify(forwarded), source, edge)

    def _trusted_issuers(self) -> tuple[x509.Certificate, ...]:
        """The policy's CAs, read again when a reload brought a new policy."""
        policy = self.tls.policy
        if self._issuers[0] is not policy:
            issuers = tuple(ca for ca in policy.trusted_issuers() if is_ca(ca))
            self._issuers = (policy, issuers)
        return self._issuers[1]

    def _verify(self, forwarded: Forwarded) -> Principal:
        certificate = forwarded.certificate
        what = (
            f"the forwarded certificate {certificate.subject.rfc4514_string()} "
            f"(serial {certificate.serial_number:x})"
        )

        def refuse(reason: str) -> ForwardedIdentityError:
            return ForwardedIdentityError(403, REFUSED, f"{what} {reason}")

        if _issuer(certificate, self._trusted_issuers()) is None:
            raise refuse("is not issued by a CA this site trusts")
        now = self.clock()
        if now < certificate.not_valid_before_utc:
            raise refuse(f"is not valid before {certificate.not_valid_before_utc.isoformat()}")
        if now > certificate.not_valid_after_utc:
            raise refuse(f"expired at {certificate.not_valid_after_utc.isoformat()}")
        # As the handshake does (crl_check "leaf"): the CRL in force must be its
        # issuer's, and must not list it. One read: a reload swaps the CRL whole.
        crl = self.tls.crl
        if self.tls.policy.crl_check != "none":
            if crl is None or crl.issuer != certificate.issuer:
                raise refuse("has no CRL of its issuer in force")
            if crl.get_revoked_certificate_by_serial_number(certificate.serial_number):
                raise refuse("is revoked (the CRL in force lists it)")
        if not forwarded.client_auth:
            raise refuse("is not for client authentication (no clientAuth extended key usage)")
        if forwarded.ca:
            raise refuse("is a CA certificate")
        principal = forwarded.principal
        if principal is None:
            raise refuse(f"names no principal: {forwarded.unnamed}")
        if principal.kind in FORBIDDEN_KINDS or principal.fingerprint in self.operators:
            raise refuse(f"names {principal.id}: an edge relays clients, not the infrastructure")
        return principal


# Per header value: the edge sends the same client's certificate on every request.
# Only values that parse are kept (at most MAX_HEADER_BYTES each).
@functools.lru_cache(maxsize=2048)
def _parse(value: bytes, trust_domain: str) -> Forwarded:
    if len(value) > MAX_HEADER_BYTES:
        raise ForwardedIdentityError(
            400, MALFORMED, f"client-cert: {len(value)} bytes, more than {MAX_HEADER_BYTES}"
        )
    match = SF_BINARY.fullmatch(value.strip(b" \t"))
    if match is None:
        raise ForwardedIdentityError(
            400, MALFORMED, "client-cert: not one RFC 9440 sf-binary (:BASE64:)"
        )
    try:
        der = base64.b64decode(match[1], validate=True)
        certificate = x509.load_der_x509_certificate(der)
    except binascii.Error as error:
        raise ForwardedIdentityError(
            400, MALFORMED, f"client-cert: not base64 ({error})"
        ) from error
    except ValueError as error:
        raise ForwardedIdentityError(
            400, MALFORMED, "client-cert: not a DER certificate"
        ) from error
    try:
        principal, unnamed = principal_of(certificate, trust_domain), ""
    except IdentityError as error:
        principal, unnamed = None, str(error)
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        client_auth = ExtendedKeyUsageOID.CLIENT_AUTH in usages
    except x509.ExtensionNotFound:
        client_auth = False
    return Forwarded(certificate, principal, unnamed, client_auth, is_ca(certificate))


# The signature is the costly check; its answer depends on the certificate and the CAs.
@functools.lru_cache(maxsize=2048)
def _issuer(
    certificate: x509.Certificate, issuers: tuple[x509.Certificate, ...]
) -> x509.Certificate | None:
    return issued_by(certificate, issuers)


def _source(values: list[bytes], peer: str) -> str:
    """The client's address from x-forwarded-for (one header, one address), else PEER."""
    if not values:
        return peer
    text = values[0].strip(b" \t").decode("latin-1")
    try:
        if len(values) != 1:
            raise ValueError("more than one header")
        address = ipaddress.ip_address(text)
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ValueError("a scoped address")
    except ValueError as error:
        raise ForwardedIdentityError(
            400, SOURCE_MALFORMED, f"x-forwarded-for {text[:64]!r}: not one IP address ({error})"
        ) from error
    return str(address)
