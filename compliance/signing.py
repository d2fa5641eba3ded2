"""Evidence signing keys: an ECDSA P-256 key on a PKCS#11 token (an HSM; SoftHSM2 in
the lab) where there is one, a key file otherwise.

A token key is named by a PKCS#11 URI (RFC 7512):

  pkcs11:token=LABEL;object=KEY-LABEL?module-path=/usr/lib/softhsm/libsofthsm2.so
        &pin-source=file:/etc/securecore-compliance/evidence.pin

`module-path` defaults to SoftHSM2's module; the user PIN comes from the file
`pin-source` names or from $COMPLIANCE_PKCS11_PIN - never from a command
line. The private key is made on the token, sensitive and not extractable:
the token signs a SHA-256 digest and the bundle gets the usual DER signature,
so `compliance verify` needs nothing but the public key.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from compliance.evidence import EvidenceError, SigningKey

if TYPE_CHECKING:
    from securecore.keys.pkcs11 import Pkcs11Keys

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN_VARIABLE = "COMPLIANCE_PKCS11_PIN"
KEY_NAME = "compliance-evidence"  # token objects are labelled NAME-vN


@dataclass(frozen=True)
class Pkcs11Uri:
    token: str
    object: str | None
    module: str
    pin_source: str | None

    def with_object(self, label: str) -> str:
        query = f"module-path={self.module}"
        if self.pin_source:
            query += f"&pin-source={self.pin_source}"
        return f"pkcs11:token={self.token};object={label}?{query}"


def is_pkcs11(value: str | Path) -> bool:
    return str(value).startswith("pkcs11:")


def parse_uri(uri: str) -> Pkcs11Uri:
    if not is_pkcs11(uri):
        raise EvidenceError(f"{uri}: not a PKCS#11 URI (pkcs11:token=...;object=...)")
    path, _, query = uri[len("pkcs11:") :].partition("?")
    attributes: dict[str, str] = {}
    for part in [p for p in path.split(";") if p] + [q for q in query.split("&") if q]:
        name, equals, value = part.partition("=")
        if not equals:
            raise EvidenceError(f"{uri}: {part!r} is not NAME=VALUE")
        attributes[name] = unquote(value)
    unknown = set(attributes) - {"token", "object", "module-path", "pin-source"}
    if unknown:
        raise EvidenceError(f"{uri}: unsupported attribute(s) {', '.join(sorted(unknown))}")
    if not attributes.get("token"):
        raise EvidenceError(f"{uri}: token=LABEL is required")
    return Pkcs11Uri(
        attributes["token"],
        attributes.get("object"),
        attributes.get("module-path", DEFAULT_MODULE),
        attributes.get("pin-source"),
    )


def _pin(uri: Pkcs11Uri) -> str:
    if uri.pin_source:
        if not uri.pin_source.startswith("file:"):
            raise EvidenceError(f"pin-source={uri.pin_source}: only file: is supported")
        path = Path(uri.pin_source[len("file:") :])
        try:
            if path.stat().st_mode & 0o007:
                raise EvidenceError(f"{path}: the PIN file is readable by others; make it 0600")
            return path.read_text().strip()
        except OSError as error:
            raise EvidenceError(f"{path}: cannot read the PIN ({error.strerror})") from error
    pin = os.environ.get(PIN_VARIABLE)
    if not pin:
        raise EvidenceError(f"token {uri.token}: no PIN (pin-source=file:... or ${PIN_VARIABLE})")
    return pin


def _open(uri: Pkcs11Uri) -> Pkcs11Keys:
    # Imported here: python-pkcs11 is needed only where a token is used.
    from securecore.keys.base import KeyStoreError
    from securecore.keys.pkcs11 import Pkcs11Keys

    try:
        return Pkcs11Keys(uri.module, uri.token, _pin(uri))
    except KeyStoreError as error:
        raise EvidenceError(str(error)) from error


class TokenSigningKey:
    """An evidence key on a token, used like cryptography's EC private key: `sign(data,
    ec.ECDSA(hashes.SHA256()))` and `public_key()`."""

    def __init__(self, uri: str) -> None:
        from securecore.keys.base import KeyStoreError

        self.uri = parse_uri(uri)
        if not self.uri.object:
            raise EvidenceError(f"{uri}: object=KEY-LABEL is required to sign")
        self._label = self.uri.object
        self._backend = _open(self.uri)
        try:
            self._public = self._backend.public_key(self.uri.object)
        except (KeyStoreError, ValueError) as error:
            self._backend.close()
            raise EvidenceError(f"token {self.uri.token}: {error}") from error
        if (
            not isinstance(self._public, ec.EllipticCurvePublicKey)
            or self._public.curve.name != "secp256r1"
        ):
            raise EvidenceError(f"{self.uri.object}: the signing key must be ECDSA P-256")

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, data: bytes, algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(algorithm, ec.ECDSA) or not isinstance(
            algorithm.algorithm, hashes.SHA256
        ):
            raise EvidenceError("the token signs ECDSA with SHA-256 only")
        return self._backend.sign_digest(self._label, hashlib.sha256(data).digest())


def generate_token_key(uri: str) -> tuple[str, ec.EllipticCurvePublicKey]:
    """A new, non-extractable P-256 key on the token URI names: its URI and public key."""
    from securecore.keys.base import KeyStoreError

    parsed = parse_uri(uri)
    backend = _open(parsed)
    try:
        label = backend.create_version(KEY_NAME, "ec_p256")
        return parsed.with_object(label), backend.public_key(label)
    except KeyStoreError as error:
        raise EvidenceError(f"token {parsed.token}: {error}") from error
    finally:
        backend.close()


# One session per token key and process: PKCS#11 logs an application in once, and a
# second login (a run that signs its bundle, then its pruning record) is refused.
_OPEN_TOKEN_KEYS: dict[str, TokenSigningKey] = {}


def load_key(value: str | Path) -> SigningKey:
    """The signing key VALUE names: a PKCS#11 URI (a token key) or a key file."""
    from compliance.evidence import load_signing_key

    if not is_pkcs11(value):
        return load_signing_key(Path(value))
    if str(value) not in _OPEN_TOKEN_KEYS:
        _OPEN_TOKEN_KEYS[str(value)] = TokenSigningKey(str(value))
    return _OPEN_TOKEN_KEYS[str(value)]
