"""Sealed core <-> plugin messages: every way a message can be wrong is refused by name."""

from __future__ import annotations

import base64
import copy

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from securecore.crypto.channel import (
    MAX_SKEW,
    MessageError,
    ReplayGuard,
    new_channel_key,
    open_message,
    public_keys_verifier,
    seal_message,
)

NOW = 1_800_000_000.0


def signer(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )

    def sign(data: bytes):
        return name, key.sign(data, ec.ECDSA(hashes.SHA256()))

    return sign, {name: pem}


CORE_SIGN, CORE_KEYS = signer("securecore-signing-v1")
KEY = new_channel_key()


def sealed(**changes):
    options = {
        "sender": "core",
        "recipient": "plugin/tickets",
        "payload": {"op": "x", "n": 1},
        "sign": CORE_SIGN,
        "now": NOW,
        **changes,
    }
    return seal_message(KEY, "tickets-1", **options)


def opened(message, guard=None, keys=None, **changes):
    options = {
        "keys": keys or {"tickets-1": KEY}.get,
        "verify": public_keys_verifier(CORE_KEYS),
        "recipient": "plugin/tickets",
        "guard": guard or ReplayGuard(),
        "now": NOW,
        **changes,
    }
    return open_message(message, **options)


def refused(message, **options) -> str:
    with pytest.raises(MessageError) as caught:
        opened(message, **options)
    return caught.value.code


def test_a_sealed_message_opens_to_its_payload_and_header() -> None:
    message = sealed()
    assert "op" not in base64.b64decode(message["ciphertext"]).decode("latin-1")
    result = opened(message)
    assert result.payload == {"op": "x", "n": 1}
    assert result.header["from"] == "core" and result.header["kid"] == "tickets-1"


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "from", "to", "id", "ts", "kid"])
def test_changing_any_signed_field_breaks_the_signature(field) -> None:
    message = sealed()
    changed = copy.deepcopy(message)
    if field in ("ciphertext", "nonce"):
        raw = bytearray(base64.b64decode(changed[field]))
        raw[0] ^= 1
        changed[field] = base64.b64encode(bytes(raw)).decode()
    elif field == "ts":
        changed[field] += 1
    else:
        changed[field] = changed[field] + "x"
    assert refused(changed) == "bad_signature"


def test_a_signature_by_another_key_or_a_swapped_key_id_is_refused() -> None:
    other_sign, _ = signer("securecore-signing-v1")  # same name, another key
    assert refused(sealed(sign=other_sign)) == "bad_signature"
    message = sealed()
    message["sig_kid"] = "securecore-signing-v2"
    assert refused(message) == "bad_signature"


def test_a_replayed_message_is_refused_the_second_time() -> None:
    guard, message = ReplayGuard(), sealed()
    opened(message, guard=guard)
    assert refused(message, guard=guard) == "replayed"


def test_stale_misdirected_and_unexpected_replies_are_refused() -> None:
    assert refused(sealed(now=NOW - MAX_SKEW - 1)) == "stale"
    assert refused(sealed(now=NOW + MAX_SKEW + 1)) == "stale"
    assert refused(sealed(recipient="plugin/other")) == "misdirected"
    reply = sealed(reply_to="a" * 32)
    assert refused(reply) == "unexpected_reply"  # expected no reply
    assert refused(reply, reply_to="b" * 32) == "unexpected_reply"
    assert opened(reply, reply_to="a" * 32).payload == {"op": "x", "n": 1}


def test_unknown_or_wrong_channel_keys_and_garbage_are_refused() -> None:
    assert refused(sealed(), keys={}.get) == "unknown_key"
    assert refused(sealed(), keys={"tickets-1": new_channel_key()}.get) == "undecryptable"
    assert refused({"hello": "world"}) == "malformed"
    assert refused("garbage") == "malformed"
    message = sealed()
    message["sig"] = "not base64!"
    assert refused(message) == "malformed"


def test_garbage_does_not_use_up_the_id_of_a_real_message() -> None:
    guard, message = ReplayGuard(), sealed()
    forged = dict(message, ciphertext=base64.b64encode(b"x" * 40).decode())
    assert refused(forged, guard=guard) == "bad_signature"
    assert opened(message, guard=guard).payload["n"] == 1
