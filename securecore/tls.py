"""The site's TLS policy: TLS 1.3 only, mutual authentication, AEAD suites, CRL checks.

roles/pki writes the policy to /etc/securecore/tls/policy.json on every host;
every service of the site (the core, plugins, probes) builds its SSL contexts
here, so that no service can drift from the policy on its own.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# TLS 1.3 suites are all AEAD; these are the ones OpenSSL enables. The CCM
# suites (TLS_AES_128_CCM*) are left out, as OpenSSL does by default.
AEAD_SUITES = ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256")
VERSIONS = {"TLSv1.3": ssl.TLSVersion.TLSv1_3}
CRL_CHECKS = {
    "none": 0,
    "leaf": ssl.VERIFY_CRL_CHECK_LEAF,
    "chain": ssl.VERIFY_CRL_CHECK_CHAIN,
}
_PATH_KEYS = (
    "ca_file",
    "crl_file",
    "server_certificate",
    "server_key",
    "client_certificate",
    "client_key",
)


class TLSPolicyError(Exception):
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
                    f"{where}: {key} = {getattr(self, key)!r}: "
                    "only TLSv1.3 is allowed (seed 001 3.3)"
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

    # --- contexts ---------------------------------------------------------------

    def server_context(self) -> ssl.SSLContext:
        """A server that accepts only TLS 1.3 clients presenting a valid, unrevoked certificate."""
        context = self._context(ssl.PROTOCOL_TLS_SERVER)
        self._load_chain(context, "server_certificate", "server_key")
        return context

    def client_context(self, *, with_certificate: bool = True) -> ssl.SSLContext:
        """A client that checks the server's name and chain and presents its own certificate."""
        context = self._context(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = True
        if with_certificate:
            self._load_chain(context, "client_certificate", "client_key")
        return context

    def _context(self, protocol: int) -> ssl.SSLContext:
        context = ssl.SSLContext(protocol)
        context.minimum_version = VERSIONS[self.minimum_version]
        context.maximum_version = VERSIONS[self.maximum_version]
        context.verify_mode = ssl.CERT_REQUIRED
        context.verify_flags |= ssl.VERIFY_X509_STRICT | CRL_CHECKS[self.crl_check]
        self._load("ca_file", context.load_verify_locations)
        if self.crl_file is not None and self.crl_check != "none":
            self._load("crl_file", context.load_verify_locations)
        # Python cannot choose TLS 1.3 suites; make sure OpenSSL's enabled set
        # is within the policy rather than assume it.
        enabled = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.3"}
        outside = sorted(enabled - set(self.ciphersuites))
        if outside:
            raise TLSPolicyError(
                f"{self.source}: OpenSSL enables TLS 1.3 suites outside the policy: {outside}"
            )
        return context

    def _load(self, key: str, loader) -> None:
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


class ReloadableServerContext:
    """A server context whose certificate, key, CA and CRL can be read again while serving.

    Every handshake starts on `context`; its SNI callback - which OpenSSL calls
    for every ClientHello, with a server name or without - moves the
    connection to the newest context. So a reload (after a key rotation, a
    renewal or a new CRL) applies to the next handshake and never touches an
    established connection, and nothing stops listening. A reload that fails
    (a half-written file, a key that does not match) leaves the current
    context serving and raises TLSPolicyError.

    The protocol versions and the verification flags come from the entry
    context: changing those in the policy needs a restart.
    """

    def __init__(self, policy_file: str | Path) -> None:
        self.policy_file = Path(policy_file)
        self.policy = TLSPolicy.from_file(self.policy_file)
        self.current = self.policy.server_context()
        self.context = self.policy.server_context()
        self.context.sni_callback = self._newest

    def _newest(self, ssl_object: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        ssl_object.context = self.current

    def reload(self) -> TLSPolicy:
        policy = TLSPolicy.from_file(self.policy_file)
        self.current = policy.server_context()
        self.policy = policy
        return policy
