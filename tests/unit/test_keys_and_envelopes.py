"""Key ring, envelope encryption and signed checkpoints, on the software key backend.

The PKCS#11 backend runs the same operations against a real SoftHSM token in
tests/integration/test_keys_pkcs11.py.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from securecore.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    sign_checkpoint,
    verify_checkpoint,
)
from securecore.crypto.envelope import Envelope, EnvelopeError, open_envelope, seal
from securecore.keys.base import KeyRing, KeyStoreError
from tests.support.keyrings import software_ring


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return software_ring(tmp_path)


def test_key_files_are_private(ring: KeyRing, tmp_path: Path) -> None:
    for path in (tmp_path / "keys").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600


def test_signatures_verify_with_cryptography_and_carry_the_key_id(ring: KeyRing) -> None:
    kid, signature = ring.sign(b"audit checkpoint")
    assert kid == "securecore-signing-v1"
    public = ring.backend.public_key(kid)
    public.verify(signature, b"audit checkpoint", ec.ECDSA(hashes.SHA256()))
    assert ring.verify(kid, b"audit checkpoint", signature)
    assert not ring.verify(kid, b"audit checkpoinT", signature)
    assert not ring.verify("securecore-kek-v1", b"audit checkpoint", signature)


def test_rotation_signs_with_the_new_version_and_the_old_one_still_verifies(
    ring: KeyRing, tmp_path: Path
) -> None:
    old_kid, old_signature = ring.sign(b"before")
    sealed = seal(ring, b"secret before rotation", b"ctx")
    assert ring.backend.create_version("securecore-signing", "ec_p256") == "securecore-signing-v2"
    ring.backend.create_version("securecore-kek", "aes256")
    new_kid, _ = ring.sign(b"after")
    assert new_kid == "securecore-signing-v2"
    assert ring.verify(old_kid, b"before", old_signature)
    assert seal(ring, b"x", b"ctx").kid == "securecore-kek-v2"
    assert open_envelope(ring, sealed, b"ctx") == b"secret before rotation"
    # Retiring v1 (removing it) ends its use: nothing signed or sealed under it opens.
    (tmp_path / "keys" / "securecore-signing-v1.pem").unlink()
    (tmp_path / "keys" / "securecore-kek-v1.aes").unlink()
    assert not ring.verify(old_kid, b"before", old_signature)
    with pytest.raises(EnvelopeError, match="securecore-kek-v1 is retired or was never made"):
        open_envelope(ring, sealed, b"ctx")


def test_envelopes_round_trip_with_unique_nonces(ring: KeyRing) -> None:
    first = seal(ring, b"payload", b"plugin-call:42")
    second = seal(ring, b"payload", b"plugin-call:42")
    assert first.nonce != second.nonce and first.wrapped_key != second.wrapped_key
    assert b"payload" not in first.to_bytes()
    parsed = Envelope.from_bytes(first.to_bytes())
    assert open_envelope(ring, parsed, b"plugin-call:42") == b"payload"


@pytest.mark.parametrize("field", ["wrap_nonce", "wrapped_key", "nonce", "ciphertext"])
def test_a_changed_envelope_does_not_open(ring: KeyRing, field: str) -> None:
    sealed = seal(ring, b"payload", b"ctx")
    value = bytearray(getattr(sealed, field))
    value[0] ^= 0x01
    with pytest.raises(EnvelopeError, match="does not open"):
        open_envelope(ring, dataclasses.replace(sealed, **{field: bytes(value)}), b"ctx")


def test_an_envelope_does_not_open_in_another_context(ring: KeyRing) -> None:
    sealed = seal(ring, b"payload", b"tenant-a")
    with pytest.raises(EnvelopeError, match="does not open"):
        open_envelope(ring, sealed, b"tenant-b")


def test_garbage_is_a_clear_error(ring: KeyRing) -> None:
    with pytest.raises(EnvelopeError, match="not a valid envelope"):
        Envelope.from_bytes(b'{"v": 1, "kid": "k-v1"}')
    with pytest.raises(EnvelopeError, match="envelope version 2 is not 1"):
        Envelope.from_bytes(b'{"v": 2}')
    with pytest.raises(KeyStoreError, match="no version of key missing exists"):
        KeyRing(ring.backend, "missing", "securecore-kek").sign(b"x")


def test_checkpoints_are_c2sp_signed_notes(ring: KeyRing) -> None:
    checkpoint = Checkpoint("securecore.example/audit", 1234, os.urandom(32))
    note = sign_checkpoint(ring, checkpoint)
    text, signature_line = note.split("\n\n")
    assert text == checkpoint.text().rstrip("\n")
    assert signature_line.startswith("\u2014 securecore.example/audit/securecore-signing-v1 ")
    keys = {"securecore-signing-v1": ring.backend.public_key("securecore-signing-v1")}
    assert verify_checkpoint(note, keys) == checkpoint
    forged = note.replace("\n1234\n", "\n1235\n")
    with pytest.raises(CheckpointError, match="does not verify"):
        verify_checkpoint(forged, keys)
    with pytest.raises(CheckpointError, match="no signature from a known key"):
        verify_checkpoint(note, {})


def test_an_old_version_is_refused_after_the_grace_period(ring: KeyRing, tmp_path: Path) -> None:
    kid, signature = ring.sign(b"old")
    sealed = seal(ring, b"old secret", b"ctx")
    ring.backend.create_version("securecore-signing", "ec_p256")
    ring.backend.create_version("securecore-kek", "aes256")
    assert ring.verify(kid, b"old", signature)  # within the 30 days
    # The successors were made 31 days ago: the old versions are past their grace.
    month_ago = time.time() - 31 * 86400
    for name in ("securecore-signing-v2.pem", "securecore-kek-v2.aes"):
        os.utime(tmp_path / "keys" / name, (month_ago, month_ago))
    assert not ring.accepts(kid)
    assert not ring.verify(kid, b"old", signature)
    with pytest.raises(EnvelopeError, match="past its grace period"):
        open_envelope(ring, sealed, b"ctx")
    # The current versions are unaffected.
    new_kid, new_signature = ring.sign(b"new")
    assert ring.verify(new_kid, b"new", new_signature)


def test_rotation_while_in_use_fails_no_operation(ring: KeyRing) -> None:
    failures: list[str] = []
    stop = threading.Event()

    def use() -> None:
        while not stop.is_set():
            try:
                kid, signature = ring.sign(b"request")
                if not ring.verify(kid, b"request", signature):
                    failures.append(f"verify {kid}")
                open_envelope(ring, seal(ring, b"payload", b"ctx"), b"ctx")
            except Exception as error:  # any failure of a request counts
                failures.append(f"{type(error).__name__}: {error}")

    workers = [threading.Thread(target=use) for _ in range(4)]
    for worker in workers:
        worker.start()
    for _ in range(20):
        ring.backend.create_version("securecore-signing", "ec_p256")
        ring.backend.create_version("securecore-kek", "aes256")
        time.sleep(0.01)
    stop.set()
    for worker in workers:
        worker.join()
    assert failures == []
    assert ring.current("securecore-signing") == "securecore-signing-v21"
