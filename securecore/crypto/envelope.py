"""AES-256-GCM envelope encryption.

Each message gets a fresh 256-bit data key; the data key encrypts the
message, the key-encryption key (on the HSM) wraps the data key. Both
encryptions use random 96-bit nonces (a data key is used once, so its nonce
can never repeat) and bind the caller's context as associated data: an
envelope opened in another context fails, as does one whose key id, wrapped
key or ciphertext was changed.

Wire format (JSON, bytes base64): {"v": 1, "kid", "wnonce", "wkey", "nonce", "ct"}.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securecore.errors import SecureCoreError
from securecore.keys.base import KeyRing, KeyStoreError, parse_key_id

NONCE_SIZE = 12
FORMAT_VERSION = 1


class EnvelopeError(SecureCoreError):
    """An envelope is malformed, or does not open (tampered, wrong context, retired key)."""


@dataclass(frozen=True)
class Envelope:
    kid: str
    wrap_nonce: bytes
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        def b64(value: bytes) -> str:
            return base64.b64encode(value).decode()

        return json.dumps(
            {
                "v": FORMAT_VERSION,
                "kid": self.kid,
                "wnonce": b64(self.wrap_nonce),
                "wkey": b64(self.wrapped_key),
                "nonce": b64(self.nonce),
                "ct": b64(self.ciphertext),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        try:
            fields = json.loads(data)
            if fields.get("v") != FORMAT_VERSION:
                raise EnvelopeError(f"envelope version {fields.get('v')!r} is not {FORMAT_VERSION}")
            parse_key_id(fields["kid"])
            return cls(
                kid=fields["kid"],
                wrap_nonce=base64.b64decode(fields["wnonce"], validate=True),
                wrapped_key=base64.b64decode(fields["wkey"], validate=True),
                nonce=base64.b64decode(fields["nonce"], validate=True),
                ciphertext=base64.b64decode(fields["ct"], validate=True),
            )
        except (ValueError, KeyError, TypeError, AttributeError, KeyStoreError) as error:
            raise EnvelopeError(
                f"not a valid envelope ({type(error).__name__}: {error})"
            ) from error


def _wrap_context(context: bytes) -> bytes:
    return b"securecore/dek\x00" + context


def seal(ring: KeyRing, plaintext: bytes, context: bytes) -> Envelope:
    kid = ring.current(ring.kek)
    data_key = AESGCM.generate_key(bit_length=256)
    wrap_nonce, nonce = os.urandom(NONCE_SIZE), os.urandom(NONCE_SIZE)
    wrapped = ring.backend.kek_encrypt(
        kid, wrap_nonce, data_key, _wrap_context(context) + kid.encode()
    )
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, context)
    return Envelope(kid, wrap_nonce, wrapped, nonce, ciphertext)


def open_envelope(ring: KeyRing, envelope: Envelope, context: bytes) -> bytes:
    name, _ = parse_key_id(envelope.kid)
    if name != ring.kek:
        raise EnvelopeError(f"envelope key {envelope.kid} is not a version of {ring.kek}")
    if not ring.accepts(envelope.kid):
        _, version = parse_key_id(envelope.kid)
        why = (
            "is past its grace period after rotation"
            if version in ring.backend.versions(name)
            else "is retired or was never made"
        )
        raise EnvelopeError(f"envelope key {envelope.kid} {why}")
    if len(envelope.nonce) != NONCE_SIZE or len(envelope.wrap_nonce) != NONCE_SIZE:
        raise EnvelopeError("envelope nonces must be 12 bytes")
    try:
        data_key = ring.backend.kek_decrypt(
            envelope.kid,
            envelope.wrap_nonce,
            envelope.wrapped_key,
            _wrap_context(context) + envelope.kid.encode(),
        )
        return AESGCM(data_key).decrypt(envelope.nonce, envelope.ciphertext, context)
    except (KeyStoreError, InvalidTag, ValueError) as error:
        raise EnvelopeError(
            f"envelope under {envelope.kid} does not open: tampered, another context, "
            "or a retired key"
        ) from error
