"""The witness's decisions and the cosignature format, on the real classes (no network)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from securecore.audit import merkle
from securecore.audit.checkpoint import Checkpoint, CheckpointError, note_key_id
from securecore.audit.witness import (
    EM_DASH,
    Witness,
    WitnessError,
    add_checkpoint_body,
    check_state_dir,
    load_witness_keys,
    merge_signatures,
    verified_cosigners,
    vkey,
    witnessed_checkpoint,
)

ORIGIN = "example.test/audit"


def sign(private: ec.EllipticCurvePrivateKey, checkpoint: Checkpoint, kid="k-v1") -> str:
    from cryptography.hazmat.primitives import hashes

    signature = private.sign(checkpoint.text().encode(), ec.ECDSA(hashes.SHA256()))
    blob = base64.b64encode(note_key_id(private.public_key()) + signature).decode()
    return f"{checkpoint.text()}\n{EM_DASH} {ORIGIN}/{kid} {blob}\n"


@pytest.fixture
def setup(tmp_path: Path):
    origin_key = ec.generate_private_key(ec.SECP256R1())
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    witness_key = ed25519.Ed25519PrivateKey.generate()
    witness = Witness("w.test", witness_key, state, {ORIGIN: {"k-v1": origin_key.public_key()}})
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(8)]
    return witness, origin_key, witness_key, leaves


def checkpoint(leaves, size) -> Checkpoint:
    return Checkpoint(ORIGIN, size, merkle.root(leaves[:size]))


def test_accepts_growth_and_cosigns_with_a_verifiable_timestamped_signature(setup) -> None:
    witness, origin_key, witness_key, leaves = setup
    first = sign(origin_key, checkpoint(leaves, 3))
    answer = witness.add_checkpoint(add_checkpoint_body(0, [], first))
    assert answer.status == 200
    cosigned = merge_signatures(first, [answer.body])
    pinned = {"w.test": witness_key.public_key()}
    assert verified_cosigners(cosigned, pinned)[1] == ["w.test"]
    assert witnessed_checkpoint(cosigned, {"k-v1": origin_key.public_key()}, pinned)[0].size == 3
    # Another witness's key of the same name does not verify it.
    other = {"w.test": ed25519.Ed25519PrivateKey.generate().public_key()}
    with pytest.raises(CheckpointError, match="no cosignature by a pinned witness"):
        witnessed_checkpoint(cosigned, {"k-v1": origin_key.public_key()}, other)
    # A changed timestamp breaks the cosignature.
    line = answer.body.split(" ")
    blob = bytearray(base64.b64decode(line[2]))
    blob[11] ^= 1
    changed = merge_signatures(first, [f"{line[0]} {line[1]} {base64.b64encode(blob).decode()}"])
    assert verified_cosigners(changed, pinned)[1] == []
    proof = merkle.consistency_proof(leaves[:7], 3)
    grown = sign(origin_key, checkpoint(leaves, 7))
    assert witness.add_checkpoint(add_checkpoint_body(3, proof, grown)).status == 200
    assert witness.add_checkpoint(add_checkpoint_body(3, proof, grown)).status == 409


def test_malformed_and_unknown_requests_are_refused_with_reasons(setup) -> None:
    witness, origin_key, _, leaves = setup
    note = sign(origin_key, checkpoint(leaves, 2))
    for body, status in (
        ("no blank line", 400),
        ("old x\n\n" + note, 400),
        ("old 0\n" + "AAAA\n" * 65 + "\n" + note, 400),
        ("old 0\n!!!\n\n" + note, 400),
        (add_checkpoint_body(3, [], note), 400),  # old beyond the checkpoint
        (add_checkpoint_body(0, [], note.replace(ORIGIN, "other.test/audit")), 404),
    ):
        assert witness.add_checkpoint(body).status == status, body[:40]


def test_a_state_file_changed_behind_the_witness_stops_it_accepting(setup) -> None:
    witness, origin_key, _, leaves = setup
    assert (
        witness.add_checkpoint(
            add_checkpoint_body(0, [], sign(origin_key, checkpoint(leaves, 2)))
        ).status
        == 200
    )
    stranger = ec.generate_private_key(ec.SECP256R1())
    (state,) = (witness.state_dir / "origins").iterdir()
    state.write_text(sign(stranger, Checkpoint(ORIGIN, 1, merkle.root(leaves[:1]))))
    answer = witness.add_checkpoint(
        add_checkpoint_body(1, [], sign(origin_key, checkpoint(leaves, 1)))
    )
    assert answer.status == 500 and "does not verify" in answer.body


def test_the_state_directory_must_be_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    check_state_dir(state)
    state.chmod(0o700 | 0o050)  # the group may read: refused
    with pytest.raises(WitnessError, match="mode 0700"):
        check_state_dir(state)


def test_pinned_witness_keys_are_checked_naming_file_and_line(tmp_path: Path) -> None:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    good = vkey("w.test", public)
    path = tmp_path / "keys"
    path.write_text(f"# pinned\n{good}\n")
    assert list(load_witness_keys(path)) == ["w.test"]
    name, _, blob = good.split("+", 2)  # base64 may hold "+" too
    path.write_text(f"{name}+00000000+{blob}\n")
    with pytest.raises(WitnessError, match=r"keys:1: .*key hash"):
        load_witness_keys(path)
