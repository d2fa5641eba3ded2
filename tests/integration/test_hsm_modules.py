"""roles/hsm's modules against a real SoftHSM2 token on the controller.

Each test gets its own token directory; the modules run through Ansible
(`ansible localhost -m ...`) exactly as the role runs them, and the keys are
then used through python-pkcs11 and checked with `cryptography`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.commands import run_module

SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")
SO_PIN, USER_PIN = "so-pin-4711-0815", "user-pin-2342"


def module(module_name: str, check: bool = False, **args: str) -> dict:
    """Run one of the role's modules on localhost; no PIN may appear in its output."""
    return run_module("hsm", module_name, args, check=check, secrets=(SO_PIN, USER_PIN))


def token(**extra: str) -> dict:
    return module(
        "pkcs11_token",
        module=str(SOFTHSM),
        label="securecore",
        so_pin=SO_PIN,
        user_pin=USER_PIN,
        **extra,
    )


def key(name: str, key_type: str, version: str = "latest", **extra) -> dict:
    return module(
        "pkcs11_key",
        module=str(SOFTHSM),
        token_label="securecore",
        user_pin=USER_PIN,
        name=name,
        type=key_type,
        version=version,
        **extra,
    )


def on_token(code: str) -> str:
    """Run python-pkcs11 code against the test's token in a fresh process.

    SoftHSM reads its configuration once per process, so each test's token
    directory is only visible to a new process. ``code`` sees ``session`` (a
    user session on the token) and prints its result.
    """
    program = (
        "import hashlib, pkcs11\n"
        "from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass\n"
        "from pkcs11.exceptions import AttributeSensitive\n"
        f"tok = pkcs11.lib({str(SOFTHSM)!r}).get_token(token_label='securecore')\n"
        f"with tok.open(user_pin={USER_PIN!r}) as session:\n"
        + "".join(f"    {line}\n" for line in code.strip().splitlines())
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def sign_on_token(label: str, message: bytes) -> bytes:
    # SoftHSM offers ECDSA over a digest computed here, not ECDSA_SHA256.
    return bytes.fromhex(
        on_token(
            f"key = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC, label={label!r})\n"
            f"print(key.sign(hashlib.sha256({message!r}).digest(), "
            "mechanism=Mechanism.ECDSA).hex())"
        )
    )


def verify(public_pem: str, raw_signature: bytes, message: bytes) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    public = serialization.load_pem_public_key(public_pem.encode())
    half = len(raw_signature) // 2  # PKCS#11 returns r || s
    der = encode_dss_signature(
        int.from_bytes(raw_signature[:half], "big"), int.from_bytes(raw_signature[half:], "big")
    )
    public.verify(der, message, ec.ECDSA(hashes.SHA256()))


def test_token_is_created_once_and_never_reinitialised(softhsm) -> None:
    assert token(check=True)["changed"] is True
    assert token()["changed"] is True
    first = token()
    assert first["changed"] is False and first["serial"]
    key("securecore-signing", "ec_p256")
    # A second converge keeps the token and its keys.
    assert token()["changed"] is False
    assert key("securecore-signing", "ec_p256")["changed"] is False


def test_wrong_user_pin_is_a_clear_error(softhsm) -> None:
    token()
    result = module(
        "pkcs11_token",
        module=str(SOFTHSM),
        label="securecore",
        so_pin=SO_PIN,
        user_pin="not-the-pin",
    )
    assert "user PIN is wrong" in result["msg"], result


def test_signing_key_signs_on_the_token_and_verifies_with_cryptography(softhsm) -> None:
    token()
    created = key("securecore-signing", "ec_p256")
    assert created["changed"] and created["label"] == "securecore-signing-v1"
    again = key("securecore-signing", "ec_p256")
    assert again["changed"] is False and again["public_key_pem"] == created["public_key_pem"]
    message = b"checkpoint 42"
    verify(created["public_key_pem"], sign_on_token("securecore-signing-v1", message), message)


def test_private_and_secret_values_cannot_be_read(softhsm) -> None:
    token()
    key("securecore-signing", "ec_p256")
    key("securecore-kek", "aes256")
    result = on_token(
        """
for cls, kt, label in ((ObjectClass.PRIVATE_KEY, KeyType.EC, 'securecore-signing-v1'),
                       (ObjectClass.SECRET_KEY, KeyType.AES, 'securecore-kek-v1')):
    obj = session.get_key(cls, kt, label=label)
    assert obj[Attribute.SENSITIVE] and not obj[Attribute.EXTRACTABLE], label
    try:
        obj[Attribute.VALUE]
        print('READABLE', label)
    except AttributeSensitive:
        print('sensitive', label)
"""
    )
    assert result.splitlines() == ["sensitive securecore-signing-v1", "sensitive securecore-kek-v1"]


def test_rotation_adds_a_version_and_the_old_one_still_verifies(softhsm) -> None:
    token()
    v1 = key("securecore-signing", "ec_p256")
    signed_by_v1 = sign_on_token("securecore-signing-v1", b"before rotation")
    assert key("securecore-signing", "ec_p256", version="next", check=True)["changed"] is True
    v2 = key("securecore-signing", "ec_p256", version="next")
    assert v2["label"] == "securecore-signing-v2" and v2["versions"] == [1, 2]
    assert v2["public_key_pem"] != v1["public_key_pem"]
    assert key("securecore-signing", "ec_p256")["label"] == "securecore-signing-v2"
    verify(v1["public_key_pem"], signed_by_v1, b"before rotation")
    # Retiring v1 is explicit, and only then is it gone.
    assert key("securecore-signing", "ec_p256", version="1", state="absent")["changed"] is True
    assert key("securecore-signing", "ec_p256")["versions"] == [2]


def test_bad_arguments_are_named(softhsm) -> None:
    token()
    assert "version 'newest'" in key("securecore-signing", "ec_p256", version="newest")["msg"]
    assert (
        "no token labelled 'other'"
        in module(
            "pkcs11_key",
            module=str(SOFTHSM),
            token_label="other",
            user_pin=USER_PIN,
            name="k",
            type="aes256",
        )["msg"]
    )
