"""Messages between the core and a plugin: AES-256-GCM, then an ECDSA signature (REQ-SVC-9).

The transport is already mutual TLS 1.3; these messages add end-to-end
protection that survives anything terminating TLS in between, and a
signature that is evidence of who said what (kept in the audit trail).

Each plugin has a channel key: 256 random bits the core makes at
registration (step 3), hands to the plugin over mutual TLS, and keeps only
wrapped by its HSM key-encryption key. A message is

    {"v": 1, "kid": CHANNEL KEY ID, "from": SENDER, "to": RECIPIENT,
     "id": MESSAGE ID, "reply_to": REQUEST ID or null, "ts": UNIX SECONDS,
     "nonce": B64, "ciphertext": B64, "sig_kid": SIGNING KEY ID, "sig": B64}

- encryption: AES-256-GCM with the channel key, a random 96-bit nonce, and
  the canonical JSON of every header field (v .. ts) as associated data, so
  a header cannot be changed or moved to another message;
- signature (encrypt-then-sign): ECDSA P-256 / SHA-256 over the canonical
  JSON of every field but "sig_kid" and "sig" (sig_kid picks the key that
  verifies, so changing it only makes verification fail). The core signs with its HSM signing key
  (sig_kid = the key id); a plugin with the key of its certificate
  (sig_kid = "cert:" + the certificate's SHA-256 fingerprint);
- freshness: a message older or newer than MAX_SKEW seconds is refused, and
  a message id seen within that window is refused as a replay; a reply must
  name the request it answers.

The signature is checked before anything is decrypted.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securecore.errors import SecureCoreError

VERSION = 1
MAX_SKEW = 120  # seconds
HEADER_FIELDS = ("v", "kid", "from", "to", "id", "reply_to", "ts")
FIELDS = (*HEADER_FIELDS, "nonce", "ciphertext", "sig_kid")

Signer = Callable[[bytes], tuple[str, bytes]]  # data -> (key id, DER signature)
Verifier = Callable[[str, bytes, bytes], bool]  # key id, data, signature -> valid


class MessageError(SecureCoreError):
    """A message is refused; `code` says why (stable, for audit and metrics)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Opened:
    header: dict[str, Any]
    payload: Any


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def new_channel_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def seal_message(
    key: bytes,
    kid: str,
    *,
    sender: str,
    recipient: str,
    payload: Any,
    sign: Signer,
    reply_to: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    header = {
        "v": VERSION,
        "kid": kid,
        "from": sender,
        "to": recipient,
        "id": uuid.uuid4().hex,
        "reply_to": reply_to,
        "ts": int(time.time() if now is None else now),
    }
    nonce = os.urandom(12)
    ciphertext = AESGCM(key).encrypt(nonce, _canonical(payload), _canonical(header))
    message = {**header, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}
    sig_kid, signature = sign(_signed_bytes(message))
    return {**message, "sig_kid": sig_kid, "sig": _b64(signature)}


def _signed_bytes(message: dict[str, Any]) -> bytes:
    return _canonical({name: message[name] for name in (*HEADER_FIELDS, "nonce", "ciphertext")})


class ReplayGuard:
    """Message ids seen within the freshness window (one per receiving process)."""

    def __init__(self, window: float = MAX_SKEW, limit: int = 100_000) -> None:
        self.window, self.limit = window, limit
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, message_id: str, now: float) -> bool:
        with self._lock:
            while self._seen and (
                next(iter(self._seen.values())) < now - 2 * self.window
                or len(self._seen) > self.limit
            ):
                self._seen.popitem(last=False)
            if message_id in self._seen:
                return False
            self._seen[message_id] = now
            return True


def open_message(
    message: Any,
    *,
    keys: Callable[[str], bytes | None],
    verify: Verifier,
    recipient: str,
    guard: ReplayGuard,
    reply_to: str | None = None,
    now: float | None = None,
) -> Opened:
    """Check and decrypt MESSAGE; MessageError names what is wrong."""
    now = time.time() if now is None else now
    if not isinstance(message, dict) or set(message) != {*FIELDS, "sig"}:
        wanted = ", ".join((*FIELDS, "sig"))
        raise MessageError("malformed", f"a message has exactly the fields {wanted}")
    if message["v"] != VERSION:
        raise MessageError("malformed", f"message version {message['v']!r}, not {VERSION}")
    try:
        signature = base64.b64decode(message["sig"], validate=True)
        nonce = base64.b64decode(message["nonce"], validate=True)
        ciphertext = base64.b64decode(message["ciphertext"], validate=True)
    except (ValueError, TypeError) as error:
        raise MessageError("malformed", f"sig, nonce, ciphertext must be base64: {error}") from None
    if not verify(str(message["sig_kid"]), _signed_bytes(message), signature):
        raise MessageError("bad_signature", f"signature by {message['sig_kid']!r} does not verify")
    if message["to"] != recipient:
        raise MessageError("misdirected", f"message for {message['to']!r}, not {recipient!r}")
    if not isinstance(message["ts"], int) or abs(now - message["ts"]) > MAX_SKEW:
        raise MessageError("stale", f"message time {message['ts']!r} is not within {MAX_SKEW} s")
    if message["reply_to"] != reply_to:
        raise MessageError(
            "unexpected_reply", f"answers {message['reply_to']!r}, expected {reply_to!r}"
        )
    key = keys(str(message["kid"]))
    if key is None:
        raise MessageError("unknown_key", f"channel key {message['kid']!r} is not known")
    header = {name: message[name] for name in HEADER_FIELDS}
    try:
        plaintext = AESGCM(key).decrypt(nonce, ciphertext, _canonical(header))
    except (InvalidTag, ValueError) as error:
        raise MessageError("undecryptable", "the ciphertext does not decrypt") from error
    # Only a message that verified and decrypted counts as seen: garbage cannot
    # use up the ids of real messages.
    if not guard.first_time(str(message["id"]), now):
        raise MessageError("replayed", f"message {message['id']} was already received")
    return Opened(header, json.loads(plaintext))


# --- who signs: the core's key ring, or a plugin's certificate key ------------------------


def certificate_kid(certificate_pem: str) -> str:
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    return "cert:" + cert.fingerprint(hashes.SHA256()).hex()


def certificate_signer(key_pem: bytes, certificate_pem: str) -> Signer:
    """Signs with the private key of CERTIFICATE (a plugin's TLS key)."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the certificate key must be an EC key (ECDSA P-256)")
    kid = certificate_kid(certificate_pem)

    def sign(data: bytes) -> tuple[str, bytes]:
        return kid, key.sign(data, ec.ECDSA(hashes.SHA256()))

    return sign


def certificate_verifier(certificate_pem: str) -> Verifier:
    """Accepts signatures by the key of CERTIFICATE only (pinned at registration)."""
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    public = cert.public_key()
    kid = certificate_kid(certificate_pem)

    def verify(signer: str, data: bytes, signature: bytes) -> bool:
        return signer == kid and _ecdsa_valid(public, data, signature)

    return verify


def public_keys_verifier(keys: dict[str, str]) -> Verifier:
    """Accepts signatures by the PEM public keys in KEYS (key id -> PEM): the core's."""
    loaded = {kid: serialization.load_pem_public_key(pem.encode()) for kid, pem in keys.items()}

    def verify(signer: str, data: bytes, signature: bytes) -> bool:
        return _ecdsa_valid(loaded.get(signer), data, signature)

    return verify


def _ecdsa_valid(public: Any, data: bytes, signature: bytes) -> bool:
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False  # unknown signer, or not an ECDSA key
    try:
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
