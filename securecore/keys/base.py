"""The key interface and the ring that picks versions."""

from __future__ import annotations

import datetime
import re
from abc import ABC, abstractmethod

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from securecore.errors import SecureCoreError

_KEY_ID = re.compile(r"^(?P<name>[A-Za-z0-9._-]+?)-v(?P<version>[1-9][0-9]*)$")


class KeyStoreError(SecureCoreError):
    """A key is missing, of the wrong kind, or an operation on it failed."""


def key_id(name: str, version: int) -> str:
    return f"{name}-v{version}"


def parse_key_id(value: str) -> tuple[str, int]:
    match = _KEY_ID.match(value)
    if not match:
        raise KeyStoreError(f"{value!r} is not a key id (NAME-vN)")
    return match["name"], int(match["version"])


class KeyBackend(ABC):
    """Where keys live. Signing keys are ECDSA P-256; key-encryption keys AES-256."""

    @abstractmethod
    def versions(self, name: str) -> list[int]:
        """Versions of NAME that exist, ascending."""

    @abstractmethod
    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey: ...

    @abstractmethod
    def sign_digest(self, kid: str, digest: bytes) -> bytes:
        """ECDSA over a SHA-256 digest; the DER signature (PKCS#11's raw r||s converted)."""

    @abstractmethod
    def kek_encrypt(self, kid: str, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM with the key-encryption key; ciphertext || tag."""

    @abstractmethod
    def kek_decrypt(self, kid: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes: ...

    @abstractmethod
    def create_version(self, name: str, kind: str) -> str:
        """Rotation: make version N+1 of NAME (kind 'ec_p256' or 'aes256'); its key id."""

    @abstractmethod
    def created(self, kid: str) -> datetime.datetime | None:
        """When the version was made (None if the backend cannot tell)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions or handles."""


class KeyRing:
    """The service's view: which version signs and wraps, and which versions are still accepted.

    The newest version of a key is used for new signatures and envelopes. An
    older version keeps verifying and unwrapping for `grace_period` after its
    successor was made (REQ-SVC-12), then it is refused even while it is
    still on the token, until an operator retires (removes) it. A version
    whose successor's date is unknown is accepted until retired.
    """

    def __init__(
        self,
        backend: KeyBackend,
        signing_key: str,
        kek: str,
        grace_period: datetime.timedelta = datetime.timedelta(days=30),
    ) -> None:
        self.backend = backend
        self.signing_key, self.kek = signing_key, kek
        self.grace_period = grace_period

    def accepts(self, kid: str) -> bool:
        name, version = parse_key_id(kid)
        versions = self.backend.versions(name)
        if version not in versions:
            return False  # never made, or retired
        later = [v for v in versions if v > version]
        if not later:
            return True
        successor_made = self.backend.created(key_id(name, later[0]))
        if successor_made is None:
            return True
        now = datetime.datetime.now(datetime.UTC)
        return now - successor_made <= self.grace_period

    def current(self, name: str) -> str:
        # Asked each time, so a rotation made while the service runs is used at
        # once, and a version made a moment ago is never missed.
        versions = self.backend.versions(name)
        if not versions:
            raise KeyStoreError(f"no version of key {name} exists")
        return key_id(name, versions[-1])

    def signing_kid(self, kid: str | None = None) -> str:
        """KID while the ring accepts it as a signing key, else the newest signing key."""
        if kid is None or parse_key_id(kid)[0] != self.signing_key or not self.accepts(kid):
            return self.current(self.signing_key)
        return kid

    def sign(self, data: bytes, kid: str | None = None) -> tuple[str, bytes]:
        """Signed with KID while the ring accepts it as a signing key, else with the newest."""
        kid = self.signing_kid(kid)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(data)
        return kid, self.backend.sign_digest(kid, digest.finalize())

    def verify(self, kid: str, data: bytes, signature: bytes) -> bool:
        name, _ = parse_key_id(kid)
        if name != self.signing_key or not self.accepts(kid):
            return False
        try:
            public = self.backend.public_key(kid)
        except KeyStoreError:
            return False  # a retired or unknown version verifies nothing
        try:
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def signing_public_keys(ring: KeyRing) -> dict:
    """Every version of the ring's signing key still on the token: {key id: public key}
    (what checkpoints and backups are verified against)."""
    name = ring.signing_key
    return {
        key_id(name, version): ring.backend.public_key(key_id(name, version))
        for version in ring.backend.versions(name)
    }
