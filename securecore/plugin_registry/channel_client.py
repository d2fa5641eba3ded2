"""The core's side of the plugin channel: set it up at registration, then make sealed calls.

Setup (registration step 3, "secure-communication test"): over mutual TLS
1.3 with the core's client certificate, the core sends the plugin a fresh
256-bit channel key and its public signing keys, pins the certificate the
plugin's endpoint presented, and makes one sealed round trip
(`securecore.ping` with a random challenge) that the plugin must answer
decrypted, re-encrypted and signed by that certificate's key, within the
timeout. The channel key is kept only wrapped by the HSM key-encryption key.

Calls (REQ-SVC-21 steps 6-8): the request is sealed (AES-256-GCM, signed
with the HSM signing key), sent over mutual TLS, and the answer is accepted
only if it is signed by the pinned certificate, fresh, not replayed, an
answer to this very request, and decrypts.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securecore.crypto.channel import (
    MessageError,
    ReplayGuard,
    certificate_verifier,
    new_channel_key,
    open_message,
    seal_message,
)
from securecore.crypto.envelope import Envelope, open_envelope, seal
from securecore.errors import SecureCoreError
from securecore.keys.base import KeyRing, key_id, parse_key_id
from securecore.plugin_registry.access import EndpointNotAllowedError, EndpointPolicy
from securecore.tls import TLSPolicy

CORE_ADDRESS = "core"


class PluginCallError(SecureCoreError):
    """A call did not come back good; `code` is what the trust score counts."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Channel:
    """What the registry keeps for a plugin's channel (no key in the clear)."""

    kid: str
    wrapped_key: str  # an envelope (securecore.crypto.envelope), base64
    certificate: str  # the endpoint's certificate (PEM), pinned at registration
    # The core's signing key version the plugin was given: calls stay signed with
    # it through its grace period after a rotation, until the plugin registers again.
    core_kid: str | None = None


def _context(name: str, kid: str) -> bytes:
    return f"securecore/plugin-channel/{name}/{kid}".encode()


def endpoint_identity_problem(der: bytes, name: str, trust_domain: str) -> str | None:
    """None when the certificate an endpoint presented belongs to plugin NAME, else why not.

    It belongs when it carries spiffe://TRUST_DOMAIN/plugin/NAME; a certificate
    with no identity of the trust domain (the site's server certificates name
    their host, roles/pki) belongs when a DNS name is NAME, the plugin's host
    name. Any other identity of the trust domain (another plugin, a core
    host) does not belong, whatever its DNS names.
    """
    certificate = x509.load_der_x509_certificate(der)
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "its certificate has no subject alternative names"
    prefix = f"spiffe://{trust_domain}/"
    wanted = f"{prefix}plugin/{name}"
    ids = [
        u for u in sans.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(prefix)
    ]
    if ids:
        return None if ids == [wanted] else f"its certificate names {', '.join(ids)}, not {wanted}"
    if name in sans.get_values_for_type(x509.DNSName):
        return None
    return f"its certificate names neither {wanted} nor the host {name}"


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to ADDRESS (checked against the plugin networks), with the name of the
    endpoint for SNI and the certificate's host name check; CHECK(der) runs after the
    handshake and before a byte of the request is sent."""

    def __init__(
        self,
        host: str,
        port: int,
        address: str,
        check: Callable[[bytes | None], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(host, port, **kwargs)
        self.address, self.check = address, check

    def connect(self) -> None:
        raw = socket.create_connection((self.address, self.port), self.timeout)
        try:
            # HTTPSConnection's own SSL context: typeshed does not declare the attribute.
            context: ssl.SSLContext = self._context  # type: ignore[attr-defined]
            self.sock = context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        self.check(self.sock.getpeercert(binary_form=True))


class PluginCaller:
    def __init__(
        self,
        policy: TLSPolicy,
        ring: KeyRing,
        timeout: float = 5.0,
        *,
        endpoints: EndpointPolicy | None = None,
        trust_domain: str = "securecore",
    ) -> None:
        self.ring, self.timeout = ring, timeout
        # Where plugins may be: nowhere unless configured (default deny).
        self.endpoints = endpoints or EndpointPolicy()
        self.trust_domain = trust_domain
        self.use(policy)
        self.guard = ReplayGuard()
        self._keys: dict[str, bytes] = {}  # unwrapped channel keys, by kid
        self._lock = threading.Lock()

    def use(self, policy: TLSPolicy) -> None:
        """Call plugins with POLICY's client certificate from now on (after a reload)."""
        self.context = policy.client_context()

    # --- transport --------------------------------------------------------------------

    def _exchange(
        self, name: str, endpoint: str, method: str, path: str, body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, Any]]:
        """One request to plugin NAME at ENDPOINT: only inside the plugin networks, and
        only once the endpoint's certificate proved to be NAME's (nothing sent before)."""
        try:
            address, port = self.endpoints.resolve(endpoint)
        except EndpointNotAllowedError as error:
            raise PluginCallError("endpoint_not_allowed", str(error)) from error

        def check(der: bytes | None) -> None:
            problem = (
                endpoint_identity_problem(der, name, self.trust_domain) if der else "no certificate"
            )
            if problem:
                raise PluginCallError(
                    "wrong_identity", f"{endpoint} is not plugin {name}: {problem}"
                )

        host = urlsplit(endpoint).hostname
        if host is None:  # refused by resolve() already; said again for the type checker
            raise PluginCallError("endpoint_not_allowed", f"{endpoint}: no host")
        connection = _PinnedHTTPSConnection(
            host,
            port,
            address,
            check,
            context=self.context,
            timeout=self.timeout,
        )
        try:
            connection.request(
                method, path, body=json.dumps(body), headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            raw = response.read()
            sock = connection.sock if isinstance(connection.sock, ssl.SSLSocket) else None
            cipher = sock.cipher() if sock else None
            peer = {
                "certificate": sock.getpeercert(binary_form=True) if sock else None,
                "tls_version": sock.version() if sock else None,
                "cipher": cipher[0] if cipher else None,
            }
        except TimeoutError as error:
            message = f"{endpoint}: no answer in {self.timeout} s"
            raise PluginCallError("timeout", message) from error
        except (OSError, ssl.SSLError, http.client.HTTPException) as error:
            raise PluginCallError(
                "unreachable", f"{endpoint}: {type(error).__name__}: {error}"
            ) from error
        finally:
            connection.close()
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = raw  # garbage: the caller decides
        return response.status, answer, peer

    # --- setup (registration step 3) --------------------------------------------------

    def core_public_keys(self) -> dict[str, str]:
        name = self.ring.signing_key
        keys = {}
        for version in self.ring.backend.versions(name):
            kid = key_id(name, version)
            if self.ring.accepts(kid):
                public = self.ring.backend.public_key(kid)
                keys[kid] = public.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ).decode()
        return keys

    def establish(self, name: str, endpoint: str) -> dict[str, Any]:
        """Hand over a new channel key and test it; the probe result registration records."""
        started = time.perf_counter()
        kid = f"{name}-{uuid.uuid4().hex[:12]}"
        key = new_channel_key()
        core_keys = self.core_public_keys()
        status, answer, peer = self._exchange(
            name,
            endpoint,
            "PUT",
            "/securecore/v1/channel",
            {
                "kid": kid,
                "key": base64.b64encode(key).decode(),
                "core_keys": core_keys,
            },
        )
        if status != 204:
            raise PluginCallError("channel_refused", f"{endpoint} refused the channel: {answer}")
        if peer["certificate"] is None or peer["tls_version"] != "TLSv1.3":
            raise PluginCallError("weak_tls", f"{endpoint}: not mutual TLS 1.3 ({peer})")
        der = peer["certificate"]
        certificate = (
            x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()
        )
        wrapped = seal(self.ring, key, _context(name, kid)).to_bytes()
        newest = max(core_keys, key=lambda k: parse_key_id(k)[1])
        channel = Channel(kid, base64.b64encode(wrapped).decode(), certificate, newest)
        with self._lock:
            self._keys[kid] = key
        challenge = secrets.token_hex(16)
        echoed = self.call(name, endpoint, channel, "securecore.ping", {"challenge": challenge})
        if echoed.get("challenge") != challenge:
            raise PluginCallError("bad_answer", f"{endpoint} did not return the challenge")
        return {
            "ok": True,
            "ms": round((time.perf_counter() - started) * 1000, 1),
            "channel": channel,
            "tls_version": peer["tls_version"],
            "cipher": peer["cipher"],
            "detail": f"{peer['tls_version']} {peer['cipher']}: channel key delivered, "
            "sealed round trip verified",
        }

    # --- calls --------------------------------------------------------------------------

    def _key(self, name: str, channel: Channel) -> bytes:
        with self._lock:
            key = self._keys.get(channel.kid)
        if key is None:
            envelope = Envelope.from_bytes(base64.b64decode(channel.wrapped_key))
            key = open_envelope(self.ring, envelope, _context(name, channel.kid))
            with self._lock:
                self._keys[channel.kid] = key
        return key

    def _signer(self, channel: Channel) -> Callable[[bytes], tuple[str, bytes]]:
        # The key version the plugin was given while the ring accepts it (the ring
        # falls back to the newest itself: one token lookup per call, not two).
        return lambda data: self.ring.sign(data, kid=channel.core_kid)

    def call(
        self,
        name: str,
        endpoint: str,
        channel: Channel,
        op: str,
        args: dict[str, Any],
        caller: str = CORE_ADDRESS,
        observe: StepObserver | None = None,
    ) -> Any:
        """The plugin's result, or PluginCallError (timeout, refused, bad_signature, ...).

        OBSERVE(step, outcome, seconds) hears each step of the flow that happens
        here: "seal" (AES-256-GCM and ECDSA, step 6), "mtls_call" (7) and "open"
        (decryption and verification of the answer, 8).
        """
        step = _Steps(observe)
        with step("seal"):
            key = self._key(name, channel)
            request = seal_message(
                key,
                channel.kid,
                sender=CORE_ADDRESS,
                recipient=f"plugin/{name}",
                payload={"op": op, "args": args, "caller": caller},
                sign=self._signer(channel),
            )
        with step("mtls_call"):
            status, answer, _ = self._exchange(
                name, endpoint, "POST", "/securecore/v1/call", request
            )
            if status != 200:
                code = answer.get("error", {}).get("code") if isinstance(answer, dict) else None
                raise PluginCallError("refused", f"{endpoint} refused the call ({status} {code})")
        with step("open"):
            try:
                opened = open_message(
                    answer,
                    keys=lambda kid: key if kid == channel.kid else None,
                    verify=certificate_verifier(channel.certificate),
                    recipient=CORE_ADDRESS,
                    guard=self.guard,
                    reply_to=request["id"],
                )
            except MessageError as error:
                raise PluginCallError(error.code, f"{endpoint}: {error}") from error
            payload = opened.payload
            answered = isinstance(payload, dict) and ("result" in payload or "error" in payload)
            if not answered:
                raise PluginCallError(
                    "malformed", f"{endpoint}: an answer is {{result}} or {{error}}"
                )
        if "error" in payload:
            failure = payload["error"] or {}
            raise PluginCallError(
                "plugin_error", f"{name}: {failure.get('code')}: {failure.get('message')}"
            )
        return payload["result"]


StepObserver = Callable[[str, str, float], None]  # (step, outcome, seconds)


class _Steps:
    """`with steps("name"):` times a step and tells the observer how it ended:
    "success", or the code of the PluginCallError (or the exception) that ended it."""

    def __init__(self, observe: StepObserver | None) -> None:
        self.observe = observe

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        outcome = "success"
        try:
            yield
        except PluginCallError as error:
            outcome = error.code
            raise
        except Exception as error:
            outcome = type(error).__name__
            raise
        finally:
            if self.observe is not None:
                self.observe(name, outcome, time.perf_counter() - started)


def registration_probe(caller: PluginCaller) -> Callable[[str, str], dict[str, Any]]:
    """Registration step 3 as the registry wants it: a result, never an exception."""

    def probe(name: str, endpoint: str) -> dict[str, Any]:
        try:
            return caller.establish(name, endpoint)
        except PluginCallError as error:
            return {"ok": False, "error": f"{error.code}: {error}"}

    return probe
