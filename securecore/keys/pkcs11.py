"""Keys on a PKCS#11 token (python-pkcs11), as roles/hsm creates them.

Objects are labelled NAME-vN; private and secret keys are sensitive and not
extractable, so every operation happens on the token. SoftHSM offers
`Mechanism.ECDSA` over a digest (not ECDSA_SHA256): we hash, the token signs,
and the raw r||s it returns is converted to DER.

SoftHSM reloads a token's object files when another process changed them
(roles/hsm making a new key version during a rotation), and object handles
found before the reload are then invalid: every operation that finds and uses
objects is retried, from the search, when the token says a handle is invalid
(or, SoftHSM's file store caught mid-write, that the function failed).
"""

from __future__ import annotations

import datetime
import hashlib
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from securecore.keys.base import KeyBackend, KeyStoreError, key_id, parse_key_id

# A data object labelled like the key records when the version was made.
CREATED_APPLICATION = "securecore/key-created"
# Searches and uses tried again on an invalidated handle (another process changed
# the token meanwhile); more in a row would mean something else is wrong.
HANDLE_ATTEMPTS = 5

T = TypeVar("T")


def _fresh_handles(operation: Callable[[], T]) -> T:
    """OPERATION's result, OPERATION run again (its search included) while the token
    invalidates the handles it found or fails it while another process writes."""
    for attempt in range(1, HANDLE_ATTEMPTS + 1):
        try:
            return operation()
        except (pkcs11.exceptions.ObjectHandleInvalid, pkcs11.exceptions.FunctionFailed):
            if attempt == HANDLE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


class Pkcs11Keys(KeyBackend):
    def __init__(self, module: str, token_label: str, user_pin: str) -> None:
        try:
            library = pkcs11.lib(module)
            token = library.get_token(token_label=token_label)
            self._session = token.open(user_pin=user_pin, rw=True)
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as error:
            raise KeyStoreError(
                f"PKCS#11 token {token_label!r} via {module}: cannot open a session "
                f"({type(error).__name__})"
            ) from error
        # One session, used by one thread at a time (PKCS#11 sessions are not
        # safe for concurrent operations).
        self._lock = threading.Lock()

    def close(self) -> None:
        self._session.close()

    def _find(self, kid: str, object_class: ObjectClass) -> Any:
        # Any: the key object's class (public, private, secret) follows OBJECT_CLASS.
        parse_key_id(kid)
        with self._lock:
            found = list(
                self._session.get_objects({Attribute.LABEL: kid, Attribute.CLASS: object_class})
            )
        if not found:
            raise KeyStoreError(f"key {kid} ({object_class.name}) is not on the token")
        return found[0]

    def versions(self, name: str) -> list[int]:
        pattern = re.compile(rf"^{re.escape(name)}-v([1-9][0-9]*)$")

        def labels() -> set[str]:
            with self._lock:
                return {
                    obj[Attribute.LABEL]
                    for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.SECRET_KEY)
                    for obj in self._session.get_objects({Attribute.CLASS: cls})
                }

        return sorted(int(m[1]) for m in map(pattern.match, _fresh_handles(labels)) if m)

    def created(self, kid: str) -> datetime.datetime | None:
        parse_key_id(kid)

        def found() -> list[Any]:
            with self._lock:
                return [
                    obj[Attribute.VALUE]
                    for obj in self._session.get_objects(
                        {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: kid}
                    )
                    if obj[Attribute.APPLICATION] == CREATED_APPLICATION
                ]

        records = _fresh_handles(found)
        if not records:
            return None  # a version made by a tool that did not record its date
        try:
            return datetime.datetime.fromisoformat(bytes(records[0]).decode())
        except ValueError:
            return None

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey:
        def encoded() -> bytes:
            public = self._find(kid, ObjectClass.PUBLIC_KEY)
            with self._lock:
                return encode_ec_public_key(public)

        der = _fresh_handles(encoded)
        # The DER of the token's EC public key (encode_ec_public_key): an EC key.
        return cast(ec.EllipticCurvePublicKey, serialization.load_der_public_key(der))

    def sign_digest(self, kid: str, digest: bytes) -> bytes:
        def signed() -> bytes:
            private = self._find(kid, ObjectClass.PRIVATE_KEY)
            with self._lock:
                return cast(bytes, private.sign(digest, mechanism=Mechanism.ECDSA))

        raw = _fresh_handles(signed)
        half = len(raw) // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    def kek_encrypt(self, kid: str, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        def encrypted() -> bytes:
            secret = self._find(kid, ObjectClass.SECRET_KEY)
            with self._lock:
                return cast(
                    bytes,
                    secret.encrypt(
                        plaintext,
                        mechanism=Mechanism.AES_GCM,
                        mechanism_param=GCMParams(nonce, aad, 128),
                    ),
                )

        return _fresh_handles(encrypted)

    def kek_decrypt(self, kid: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        def decrypted() -> bytes:
            secret = self._find(kid, ObjectClass.SECRET_KEY)
            with self._lock:
                return cast(
                    bytes,
                    secret.decrypt(
                        ciphertext,
                        mechanism=Mechanism.AES_GCM,
                        mechanism_param=GCMParams(nonce, aad, 128),
                    ),
                )

        try:
            return _fresh_handles(decrypted)
        except pkcs11.PKCS11Error as error:
            raise KeyStoreError(
                f"unwrapping with {kid} failed: wrong key, context or data"
            ) from error

    def create_version(self, name: str, kind: str) -> str:
        versions = self.versions(name)
        kid = key_id(name, (versions[-1] if versions else 0) + 1)
        attributes = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False}
        # The same id as roles/hsm's pkcs11_key gives: derived from the label.
        object_id = hashlib.sha256(kid.encode()).digest()[:8]
        with self._lock:
            if kind == "ec_p256":
                parameters = self._session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                    local=True,
                )
                parameters.generate_keypair(store=True, label=kid, private_template=attributes)
            elif kind == "aes256":
                self._session.generate_key(
                    KeyType.AES, 256, store=True, label=kid, id=object_id, template=attributes
                )
            else:
                raise KeyStoreError(f"key kind {kind!r}: one of ec_p256, aes256")
            # The same record of creation as roles/hsm's pkcs11_key writes.
            self._session.create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: False,
                    Attribute.LABEL: kid,
                    Attribute.APPLICATION: CREATED_APPLICATION,
                    Attribute.VALUE: datetime.datetime.now(datetime.UTC)
                    .isoformat(timespec="seconds")
                    .encode(),
                }
            )
        return kid
