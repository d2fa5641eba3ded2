"""Keys in files, for development and tests: NAME-vN.pem (ECDSA P-256) and NAME-vN.aes.

Files are 0600 in a 0700 directory. This backend exists so that a newcomer
can run the service without an HSM; production uses the PKCS#11 backend.
"""

from __future__ import annotations

import datetime
import os
import re
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securecore.keys.base import KeyBackend, KeyStoreError, key_id, parse_key_id

SUFFIX = {"ec_p256": ".pem", "aes256": ".aes"}


class SoftwareKeys(KeyBackend):
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise KeyStoreError(f"{self.directory}: the key directory does not exist")

    def _path(self, kid: str) -> Path:
        parse_key_id(kid)
        for suffix in SUFFIX.values():
            path = self.directory / f"{kid}{suffix}"
            if path.exists():
                return path
        raise KeyStoreError(f"key {kid} does not exist in {self.directory}")

    def versions(self, name: str) -> list[int]:
        pattern = re.compile(rf"^{re.escape(name)}-v([1-9][0-9]*)\.(pem|aes)$")
        found = (pattern.match(entry.name) for entry in self.directory.iterdir())
        return sorted(int(match[1]) for match in found if match)

    def _private(self, kid: str) -> ec.EllipticCurvePrivateKey:
        path = self._path(kid)
        if path.suffix != ".pem":
            raise KeyStoreError(f"key {kid} is not a signing key")
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyStoreError(f"{path}: not an ECDSA key")
        return key

    def _secret(self, kid: str) -> bytes:
        path = self._path(kid)
        if path.suffix != ".aes":
            raise KeyStoreError(f"key {kid} is not a key-encryption key")
        secret = path.read_bytes()
        if len(secret) != 32:
            raise KeyStoreError(f"{path}: an AES-256 key has 32 bytes, this one {len(secret)}")
        return secret

    def created(self, kid: str) -> datetime.datetime | None:
        # The file's modification time: keys are written once and never changed.
        return datetime.datetime.fromtimestamp(self._path(kid).stat().st_mtime, datetime.UTC)

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey:
        return self._private(kid).public_key()

    def sign_digest(self, kid: str, digest: bytes) -> bytes:
        return self._private(kid).sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))

    def kek_encrypt(self, kid: str, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return AESGCM(self._secret(kid)).encrypt(nonce, plaintext, aad)

    def kek_decrypt(self, kid: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return AESGCM(self._secret(kid)).decrypt(nonce, ciphertext, aad)
        except InvalidTag as error:
            raise KeyStoreError(
                f"unwrapping with {kid} failed: wrong key, context or data"
            ) from error

    def create_version(self, name: str, kind: str) -> str:
        if kind not in SUFFIX:
            raise KeyStoreError(f"key kind {kind!r}: one of {', '.join(SUFFIX)}")
        versions = self.versions(name)
        kid = key_id(name, (versions[-1] if versions else 0) + 1)
        if kind == "ec_p256":
            data = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        else:
            data = AESGCM.generate_key(bit_length=256)
        # Written under a temporary name and then linked into place: a reader
        # listing versions never sees a half-written key, and link() fails if
        # another process made the same version meanwhile (no overwrite).
        final = self.directory / f"{kid}{SUFFIX[kind]}"
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, prefix=".new-")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, final)
            except FileExistsError as error:
                raise KeyStoreError(f"{final} was made by someone else meanwhile") from error
        finally:
            Path(temporary).unlink()
        return kid
