"""Checkpoints of the audit log as C2SP signed notes (c2sp.org/tlog-checkpoint).

    <origin>\n<tree size>\n<base64 root hash>\n
    \n
    — <key name> base64(key ID || signature)\n

Signature type 0x02 of c2sp.org/signed-note: ECDSA P-256 over the note text,
DER-encoded, key ID = SHA-256(DER SubjectPublicKeyInfo)[:4]. The key name
is "<origin>/<key id>" (NAME-vN), so a verifier with the public keys alone
knows which version signed.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from securecore.errors import SecureCoreError
from securecore.keys.base import KeyRing

EM_DASH = "\u2014"


class CheckpointError(SecureCoreError):
    """A checkpoint is malformed or its signature does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def note_key_id(public_key: ec.EllipticCurvePublicKey) -> bytes:
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()[:4]


def sign_checkpoint(ring: KeyRing, checkpoint: Checkpoint, kid: str | None = None) -> str:
    """The checkpoint as a signed note, signed with KID (while the ring accepts it) or
    the ring's newest signing key version."""
    if not checkpoint.origin or any(c.isspace() or c == "+" for c in checkpoint.origin):
        raise CheckpointError(f"origin {checkpoint.origin!r}: non-empty, no spaces or '+'")
    text = checkpoint.text()
    kid, signature = ring.sign(text.encode(), kid)
    key_hash = note_key_id(ring.backend.public_key(kid))
    encoded = base64.b64encode(key_hash + signature).decode()
    return f"{text}\n{EM_DASH} {checkpoint.origin}/{kid} {encoded}\n"


def parse_checkpoint(note: str) -> tuple[Checkpoint, list[tuple[str, bytes, bytes]]]:
    """The checkpoint and its signature lines (key name, key ID, signature), unverified."""
    text, separator, signatures = note.rpartition("\n\n")
    if not separator or not text:
        raise CheckpointError("not a signed note: no blank line before the signatures")
    lines = text.split("\n")
    if len(lines) < 3:
        raise CheckpointError("a checkpoint has an origin, a size and a root hash")
    origin, size_text, root_text = lines[:3]
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise CheckpointError(f"tree size {size_text!r} is not a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except ValueError as error:
        raise CheckpointError("the root hash is not base64") from error
    if len(root) != 32:
        raise CheckpointError(f"the root hash has {len(root)} bytes, not 32")
    parsed = []
    for line in signatures.rstrip("\n").split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != EM_DASH:
            raise CheckpointError(f"malformed signature line {line!r}")
        blob = base64.b64decode(parts[2])
        parsed.append((parts[1], blob[:4], blob[4:]))
    return Checkpoint(origin, int(size_text), root), parsed


def verify_checkpoint(note: str, public_keys: dict[str, ec.EllipticCurvePublicKey]) -> Checkpoint:
    """Verify with known public keys (by key id NAME-vN); unknown signers are ignored."""
    checkpoint, signatures = parse_checkpoint(note)
    verified = False
    for key_name, key_hash, signature in signatures:
        origin, _, kid = key_name.rpartition("/")
        public = public_keys.get(kid)
        if origin != checkpoint.origin or public is None or note_key_id(public) != key_hash:
            continue
        try:
            public.verify(signature, checkpoint.text().encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as error:
            raise CheckpointError(f"the signature by {key_name} does not verify") from error
        verified = True
    if not verified:
        raise CheckpointError("no signature from a known key")
    return checkpoint
