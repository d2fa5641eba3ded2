"""The site's TLS policy: TLS 1.3 only, mutual authentication, AEAD suites, CRL checks.

roles/pki writes the policy to /etc/securecore/tls/policy.json on every host;
every service of the site (the core, plugins, probes) builds its SSL contexts
here, so that no service can drift from the policy on its own.

Revocation is bounded in time: servers issue no session tickets, so every
connection is a full handshake that checks the chain against the CRL in
force; and a serving process watches the policy and the files it names
(TLSFileWatcher), loading a changed CRL, CA, certificate or key within
`watch_seconds` (at most 60) without a reload signal. A CRL that does not
parse, is not signed by a CA this host trusts, has expired or is older than
the one in force is refused: the previous one stays in force.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from securecore.errors import SecureCoreError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

# TLS 1.3 suites are all AEAD; these are the ones OpenSSL enables. The CCM
# suites (TLS_AES_128_CCM*) are left out, as OpenSSL does by default.
AEAD_SUITES = ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256")
VERSIONS = {"TLSv1.3": ssl.TLSVersion.TLSv1_3}
CRL_CHECKS = {
    "none": 0,
    "leaf": ssl.VERIFY_CRL_CHECK_LEAF,
    "chain": ssl.VERIFY_CRL_CHECK_CHAIN,
}
# How often a serving process looks at its TLS files; the time from a CRL
# written on disk to its revocations refusing handshakes is at most this.
DEFAULT_WATCH_SECONDS = 5.0
MAX_WATCH_SECONDS = 60.0
log = logging.getLogger("securecore.tls")
_PATH_KEYS = (
    "ca_file",
    "crl_file",
    "server_certificate",
    "server_key",
    "client_certificate",
    "client_key",
)


class TLSPolicyError(SecureCoreError):
    """The policy file or a file it names is wrong; the message names the key and the file."""


@dataclass(frozen=True)
class TLSPolicy:
    ca_file: Path
    crl_file: Path | None = None
    server_certificate: Path | None = None
    server_key: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None
    minimum_version: str = "TLSv1.3"
    maximum_version: str = "TLSv1.3"
    ciphersuites: tuple[str, ...] = AEAD_SUITES
    verify_client: str = "required"
    crl_check: str = "leaf"
    watch_seconds: float = DEFAULT_WATCH_SECONDS
    source: str = "<policy>"

    @classmethod
    def from_file(cls, path: str | Path) -> TLSPolicy:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise TLSPolicyError(
                f"{path}: cannot read the TLS policy ({error.strerror})"
            ) from error
        except ValueError as error:
            raise TLSPolicyError(f"{path}: not valid JSON ({error})") from error
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def from_mapping(cls, data: Any, source: str = "<policy>") -> TLSPolicy:
        if not isinstance(data, dict):
            raise TLSPolicyError(f"{source}: the TLS policy must be a mapping")
        known = {field.name for field in fields(cls)} - {"source"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TLSPolicyError(f"{source}: unknown key(s) {', '.join(unknown)}")
        if "ca_file" not in data:
            raise TLSPolicyError(f"{source}: ca_file is required (the trust anchor)")
        values: dict[str, Any] = {"source": source}
        for key, value in data.items():
            if key in _PATH_KEYS:
                if value is not None and not isinstance(value, str):
                    raise TLSPolicyError(f"{source}: {key} must be a path string")
                values[key] = Path(value) if value else None
            elif key == "ciphersuites":
                if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                    raise TLSPolicyError(f"{source}: ciphersuites must be a list of suite names")
                values[key] = tuple(value)
            else:
                values[key] = value
        policy = cls(**values)
        policy.validate()
        return policy

    def validate(self) -> None:
        where = self.source
        for key in ("minimum_version", "maximum_version"):
            if getattr(self, key) not in VERSIONS:
                raise TLSPolicyError(
                    f"{where}: {key} = {getattr(self, key)!r}: only TLSv1.3 is allowed (REQ-PKI-1)"
                )
        weak = [suite for suite in self.ciphersuites if suite not in AEAD_SUITES]
        if weak or not self.ciphersuites:
            raise TLSPolicyError(
                f"{where}: ciphersuites {weak or '[]'}: allowed are {', '.join(AEAD_SUITES)}"
            )
        if self.verify_client != "required":
            raise TLSPolicyError(
                f"{where}: verify_client = {self.verify_client!r}: mutual TLS is required"
            )
        if self.crl_check not in CRL_CHECKS:
            raise TLSPolicyError(
                f"{where}: crl_check = {self.crl_check!r}: one of {', '.join(CRL_CHECKS)}"
            )
        if self.crl_check != "none" and self.crl_file is None:
            raise TLSPolicyError(f"{where}: crl_check = {self.crl_check!r} needs crl_file")
        seconds = self.watch_seconds
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 < seconds <= MAX_WATCH_SECONDS
        ):
            raise TLSPolicyError(
                f"{where}: watch_seconds = {seconds!r}: a number of seconds, more than 0 and "
                f"at most {MAX_WATCH_SECONDS:g} (the bound on how late a revocation applies)"
            )

    # --- contexts ---------------------------------------------------------------

    def server_context(self) -> ssl.SSLContext:
        """A server that accepts only TLS 1.3 clients presenting a valid, unrevoked certificate.

        It issues no session tickets: a resumed TLS 1.3 session carries the
        client's certificate from its first handshake and is never checked
        against a newer CRL (and ticket keys outlive a reload), so every
        connection is a full handshake instead. OP_NO_TICKET alone would
        make OpenSSL issue stateful TLS 1.3 tickets; num_tickets = 0 issues
        none.
        """
        context = self._context(ssl.PROTOCOL_TLS_SERVER)
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
        self._load_chain(context, "server_certificate", "server_key")
        self._load_crl(context, require_issuer=True)
        return context

    def client_context(self, *, with_certificate: bool = True) -> ssl.SSLContext:
        """A client that checks the server's name and chain and presents its own certificate."""
        context = self._context(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = True
        if with_certificate:
            self._load_chain(context, "client_certificate", "client_key")
        self._load_crl(context, require_issuer=False)
        return context

    def _context(self, protocol: int) -> ssl.SSLContext:
        context = ssl.SSLContext(protocol)
        context.minimum_version = VERSIONS[self.minimum_version]
        context.maximum_version = VERSIONS[self.maximum_version]
        context.verify_mode = ssl.CERT_REQUIRED
        context.verify_flags |= ssl.VERIFY_X509_STRICT | CRL_CHECKS[self.crl_check]
        self._load("ca_file", context.load_verify_locations)
        # Python cannot choose TLS 1.3 suites; make sure OpenSSL's enabled set
        # is within the policy rather than assume it.
        enabled = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.3"}
        outside = sorted(enabled - set(self.ciphersuites))
        if outside:
            raise TLSPolicyError(
                f"{self.source}: OpenSSL enables TLS 1.3 suites outside the policy: {outside}"
            )
        return context

    def _load_crl(self, context: ssl.SSLContext, *, require_issuer: bool) -> None:
        """After the host's own chain: the CRL's issuer may be the intermediate in
        it, and a missing certificate is named as such, not as an untrusted CRL."""
        if self.crl_file is not None and self.crl_check != "none":
            # A CRL OpenSSL would trip on is refused here, named.
            self.revocation_list(require_issuer=require_issuer)
            self._load("crl_file", context.load_verify_locations)

    # --- the CRL ------------------------------------------------------------------

    def revocation_list(
        self, *, require_issuer: bool = True
    ) -> x509.CertificateRevocationList | None:
        """The CRL in crl_file, checked: it parses, it is signed by a CA this host trusts
        (ca_file, or a CA certificate in the chains of its own certificates that
        ca_file issued - the site's intermediate) and it has not expired.
        None if the policy checks no CRL. OpenSSL would otherwise load a CRL of
        another issuer or a forged one without a word and then refuse every
        client, or (an expired one) refuse every client.

        A server has the site's intermediate in its own chain: its issuer is
        REQUIRED. A client whose own chain lacks it (a certificate of another
        CA) leaves the signature to OpenSSL, which checks it against the
        peer's chain in every handshake and fails closed; a trusted issuer it
        does know must have signed the CRL."""
        if self.crl_file is None or self.crl_check == "none":
            return None
        where = f"{self.source}: crl_file = {self.crl_file}"
        try:
            crl = x509.load_pem_x509_crl(Path(self.crl_file).read_bytes())
        except OSError as error:
            raise TLSPolicyError(f"{where}: cannot read it ({error.strerror})") from error
        except ValueError as error:
            raise TLSPolicyError(f"{where}: not a PEM CRL ({error})") from error
        issuers = self._crl_issuers(crl)
        if (issuers or require_issuer) and not any(
            # A key that cannot sign (X25519, ...) is refused by is_signature_valid itself.
            crl.is_signature_valid(cast("CertificateIssuerPublicKeyTypes", ca.public_key()))
            for ca in issuers
        ):
            raise TLSPolicyError(
                f"{where}: not signed by a CA this host trusts (issuer "
                f"{crl.issuer.rfc4514_string()}): refused"
            )
        next_update = crl.next_update_utc
        if next_update is not None and next_update < datetime.datetime.now(datetime.UTC):
            raise TLSPolicyError(f"{where}: expired at {next_update.isoformat()}: refused")
        return crl

    def _crl_issuers(self, crl: x509.CertificateRevocationList) -> list[x509.Certificate]:
        return [ca for ca in self.trusted_issuers() if ca.subject == crl.issuer]

    def trusted_issuers(self) -> list[x509.Certificate]:
        """The CAs this host trusts to issue certificates: those of ca_file, and the CA
        certificates in the chains of its own certificates that one of them issued (the
        site's intermediate, which signs the leaves and the CRL but is not in ca_file)."""
        anchors = _certificates(self.ca_file)
        chains = [
            certificate
            for key in ("server_certificate", "client_certificate")
            for certificate in _certificates(getattr(self, key))
        ]
        issuers = list(anchors)
        for candidate in chains:
            if candidate in issuers or not is_ca(candidate):
                continue
            if issued_by(candidate, anchors) is not None:
                issuers.append(candidate)
        return issuers

    def watched_files(self) -> list[Path]:
        """The files a serving process reads its TLS from (watched for changes)."""
        return [getattr(self, key) for key in _PATH_KEYS if getattr(self, key) is not None]

    def _load(self, key: str, loader: Callable[[str], object]) -> None:
        path = getattr(self, key)
        try:
            loader(str(path))
        except (OSError, ssl.SSLError) as error:
            raise TLSPolicyError(
                f"{self.source}: {key} = {path}: cannot load it ({error})"
            ) from error

    def _load_chain(self, context: ssl.SSLContext, cert_key: str, key_key: str) -> None:
        cert, key = getattr(self, cert_key), getattr(self, key_key)
        if cert is None or key is None:
            raise TLSPolicyError(f"{self.source}: {cert_key} and {key_key} are required here")
        try:
            context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as error:
            raise TLSPolicyError(
                f"{self.source}: {cert_key} = {cert} with {key_key} = {key}: cannot load them "
                f"({error})"
            ) from error


def _certificates(path: Path | None) -> list[x509.Certificate]:
    """The certificates in a PEM file; none if it is missing or unreadable (the
    context load that follows names that error)."""
    if path is None:
        return []
    try:
        return x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError):
        return []


def is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def issued_by(
    certificate: x509.Certificate, issuers: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    """The one of ISSUERS whose name and key signed CERTIFICATE, or None."""
    for issuer in issuers:
        try:
            certificate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return issuer
    return None


class LiveConnections:
    """The TLS connections this process serves, with their client certificates.

    TLS checks a certificate once, in the handshake: a connection opened
    before a CRL revoked its certificate would go on (HTTP keep-alive) with
    whatever needs no session - the admin API is certificate-only. So a newly
    loaded CRL also ends the connections of the certificates it revokes.
    securecore.server.tls_scope adds and removes every connection.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, tuple[Any, asyncio.AbstractEventLoop, bytes]] = {}

    def add(self, transport: Any, certificate_der: bytes | None) -> None:
        """On the event loop, when the connection is made."""
        if certificate_der:
            with self._lock:
                self._live[id(transport)] = (transport, asyncio.get_running_loop(), certificate_der)

    def discard(self, transport: Any) -> None:
        with self._lock:
            self._live.pop(id(transport), None)

    def end_revoked(self, crl: x509.CertificateRevocationList) -> int:
        """Abort (from any thread) the connections whose certificate CRL revokes."""
        with self._lock:
            live = list(self._live.values())
        ended = 0
        for transport, loop, der in live:
            certificate = x509.load_der_x509_certificate(der)
            if certificate.issuer == crl.issuer and crl.get_revoked_certificate_by_serial_number(
                certificate.serial_number
            ):
                loop.call_soon_threadsafe(transport.abort)
                ended += 1
        return ended


LIVE_CONNECTIONS = LiveConnections()


def file_fingerprints(paths: Iterable[Path]) -> dict[str, str | None]:
    """Path -> SHA-256 of its content, None where it cannot be read."""
    seen: dict[str, str | None] = {}
    for path in paths:
        try:
            seen[str(path)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            seen[str(path)] = None
    return seen


class ReloadableServerContext:
    """A server context whose certificate, key, CA and CRL can be read again while serving.

    Every handshake starts on `context`; its SNI callback - which OpenSSL calls
    for every ClientHello, with a server name or without - moves the
    connection to the newest context. So a reload (after a key rotation, a
    renewal or a new CRL) applies to the next handshake, nothing stops
    listening, and established connections carry on - except those of a
    certificate the new CRL revokes, which end (LiveConnections). A reload that fails
    (a half-written file, a key that does not match, a CRL that is forged,
    expired or older than the one in force) leaves the current context
    serving and raises TLSPolicyError.

    The protocol versions and the verification flags come from the entry
    context: changing those in the policy needs a restart.
    """

    def __init__(self, policy_file: str | Path) -> None:
        self.policy_file = Path(policy_file)
        self.policy = TLSPolicy.from_file(self.policy_file)
        # Taken before the material is read, for the watcher to start from: a
        # file rewritten while this process starts (a CRL written as a worker
        # comes up) is then a change, not the state it already serves.
        self.loaded = file_fingerprints(self.watched_files())
        self.crl = self.policy.revocation_list()
        self.current = self.policy.server_context()
        self.context = self.policy.server_context()
        self.context.sni_callback = self._newest

    def _newest(self, ssl_object: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        ssl_object.context = self.current

    @property
    def revoked_serials(self) -> frozenset[int]:
        """The serial numbers the CRL in force revokes."""
        return frozenset(entry.serial_number for entry in self.crl or ())

    def reload(self) -> TLSPolicy:
        policy = TLSPolicy.from_file(self.policy_file)
        loaded = file_fingerprints([self.policy_file, *policy.watched_files()])
        crl = policy.revocation_list()
        # An older CRL of the same CA put back (it lacks the newest revocations)
        # is a rollback.
        in_force = self.crl
        if (
            crl is not None
            and in_force is not None
            and crl.issuer == in_force.issuer
            and crl.last_update_utc < in_force.last_update_utc
        ):
            raise TLSPolicyError(
                f"{policy.source}: crl_file = {policy.crl_file}: issued "
                f"{crl.last_update_utc.isoformat()}, older than the CRL in force "
                f"({in_force.last_update_utc.isoformat()}): refused"
            )
        # Built whole before it is swapped in: a handshake sees the old context
        # or the new one, never a half-loaded one.
        current = policy.server_context()
        self.current, self.policy, self.crl, self.loaded = current, policy, crl, loaded
        ended = LIVE_CONNECTIONS.end_revoked(crl) if crl is not None else 0
        if ended:
            log.warning("%d open connection(s) ended: their certificates are now revoked", ended)
        return policy

    def watched_files(self) -> list[Path]:
        return [self.policy_file, *self.policy.watched_files()]


class TLSFileWatcher:
    """Calls ON_CHANGE (in its own thread) when one of FILES() changes, at most
    INTERVAL seconds after, or at once when asked (`reload_now`, for SIGHUP).

    A change is a different content (SHA-256) or a file appearing or going away:
    comparing contents rather than times catches an edit within the same
    second and a file put back with its old time. Files are read every
    INTERVAL; TLS material is a few kilobytes. A failing ON_CHANGE is logged
    and tried again on the next change (a certificate and its key written one
    after the other load once both are there).
    """

    def __init__(
        self,
        files: Callable[[], list[Path]],
        on_change: Callable[[str], None],
        interval: float,
        name: str = "tls-watch",
        *,
        loaded: dict[str, str | None] | None = None,
    ) -> None:
        self.files, self.on_change = files, on_change
        self.interval = min(max(float(interval), 0.05), MAX_WATCH_SECONDS)
        # LOADED: the files as they were when the serving context read them
        # (ReloadableServerContext.loaded); without it, as they are now.
        self._seen = self._fingerprint() if loaded is None else dict(loaded)
        self._wake = threading.Event()
        self._forced = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> TLSFileWatcher:
        self._thread.start()
        return self

    def reload_now(self) -> None:
        """Safe in a signal handler: only sets a flag and wakes the thread."""
        self._forced = True
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _fingerprint(self) -> dict[str, str | None]:
        return file_fingerprints(self.files())

    def check(self) -> None:
        """One look at the files (the thread does this every interval)."""
        forced, self._forced = self._forced, False
        now = self._fingerprint()
        changed = sorted(
            path for path in set(now) | set(self._seen) if now.get(path) != self._seen.get(path)
        )
        if not (forced or changed):
            return
        self._seen = now
        trigger = "reload signal" if forced else "changed on disk: " + ", ".join(changed)
        try:
            self.on_change(trigger)
        except Exception:  # the watcher must outlive any failure, and say it
            log.exception("reloading the TLS files (%s) failed", trigger)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.interval)
            self._wake.clear()
            if not self._stopping:
                self.check()
