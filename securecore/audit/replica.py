"""A verified copy of another core host's audit log: what the standby keeps of the active's.

`securecore audit replicate --from https://ACTIVE:8443` (securecore-replica.timer
on the standby, every minute) asks the active for the records after the
ones it holds (/v1/replication/audit, over mutual TLS with the standby's
core certificate) and adds them to its own store - but only after checking
them: sequence numbers follow on, each record is hashed into the replica's
own Merkle tree (RFC 9162, as the active does), and at every signed
checkpoint of the active the replica's tree must have the same root. A
history that changed on the active (a rewritten or removed record, a log
restored to an earlier state and written on) cannot match and is refused
with the size where it diverged; nothing of that batch is stored, and the
copy keeps what it had.

At start the whole copy is re-hashed and checked against the checkpoints it
stored, so a copy changed on the standby's disk is found too.

Every checkpoint - the stored ones at start, each batch's - must carry a
signature that verifies with the origin's public keys PINNED on this host
([audit] origin_keys, deployed by the role). The keys the origin sends with
its answer are never used: an origin (or whoever answers in its place) that
signs with a key nobody pinned is refused, and so is a stored note whose
signature does not verify.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from securecore.audit import merkle
from securecore.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    parse_checkpoint,
    verify_checkpoint,
)
from securecore.audit.store import SQLiteAuditStore
from securecore.errors import SecureCoreError
from securecore.tls import TLSPolicy

BATCH = 5000
MAX_BATCHES = 200  # a run is bounded; the next run carries on


class ReplicaError(SecureCoreError):
    """The origin's log cannot be copied as it is: the copy was left as it was."""


@dataclass(frozen=True)
class ReplicaStatus:
    origin: str
    size: int  # records held
    verified: int  # covered by a checkpoint of the origin the copy matched
    origin_size: int
    added: int


class AuditReplica:
    def __init__(
        self,
        directory: str | Path,
        source: str,
        tls: TLSPolicy,
        origin_keys: dict[str, dict[str, ec.EllipticCurvePublicKey]],
        timeout: float = 30,
    ):
        self.directory = Path(directory)
        self.origin_keys = origin_keys
        self.origin: str | None = None  # the one origin this copy follows
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.source, self.timeout = source, timeout
        self.context = tls.client_context()
        self.store = SQLiteAuditStore(self.directory / "audit.db")
        self.tree = merkle.CompactRange()
        self.size = 0
        self.verified = 0
        self._check_own_copy()

    def _check_own_copy(self) -> None:
        """Re-hash what is stored; every stored checkpoint must verify and its root match."""
        roots = {}
        for size, note in self.store.checkpoints():
            try:
                roots[size] = self._verified(note).root
            except CheckpointError as error:
                raise ReplicaError(f"{self.store.path}: checkpoint {size}: {error}") from error
        for seq, entry in self.store.entries():
            if seq != self.size + 1:
                raise ReplicaError(f"{self.store.path}: record {self.size + 1} is missing")
            self.tree.append(merkle.leaf_hash(entry))
            self.size = seq
            if seq in roots:
                if roots[seq] != self.tree.root():
                    raise ReplicaError(
                        f"{self.store.path}: the copy changed: the tree of size {seq} does "
                        "not match the checkpoint it was copied with"
                    )
                self.verified = seq

    def _verified(self, note: str) -> Checkpoint:
        """NOTE's checkpoint, if a pinned key of its origin signed it (and it is our origin)."""
        origin = parse_checkpoint(note)[0].origin
        if self.origin is not None and origin != self.origin:
            raise CheckpointError(f"origin {origin!r}, but this copy follows {self.origin!r}")
        keys = self.origin_keys.get(origin)
        if not keys:
            raise CheckpointError(f"origin {origin!r} has no pinned key on this host")
        checkpoint = verify_checkpoint(note, keys)
        self.origin = origin
        return checkpoint

    def _fetch(self, after: int) -> dict[str, Any]:
        url = urlsplit(self.source)
        if url.hostname is None:
            raise ReplicaError(f"{self.source}: no host in the URL")
        connection = http.client.HTTPSConnection(
            url.hostname, url.port or 443, context=self.context, timeout=self.timeout
        )
        try:
            connection.request("GET", f"/v1/replication/audit?after={after}&limit={BATCH}")
            response = connection.getresponse()
            body = response.read()
        except (OSError, ssl.SSLError, http.client.HTTPException) as error:
            raise ReplicaError(f"{self.source}: {type(error).__name__}: {error}") from error
        finally:
            connection.close()
        try:
            answer = json.loads(body)
        except ValueError as error:
            raise ReplicaError(f"{self.source} answered {response.status}, not JSON") from error
        if response.status != 200:
            message = answer.get("error", {}).get("message") if isinstance(answer, dict) else ""
            raise ReplicaError(f"{self.source} answered {response.status}: {message}")
        return answer

    def _checked(self, answer: dict[str, Any]) -> tuple[list, list, merkle.CompactRange]:
        """The batch's rows and checkpoints, if it continues this copy; ReplicaError if not."""
        try:
            records = [(int(seq), entry.encode("utf-8")) for seq, entry in answer["records"]]
            notes = {int(size): note for size, note in answer["checkpoints"]}
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ReplicaError(f"{self.source}: not a replication answer ({error})") from error
        tree = self.tree.copy()
        expected = self.size
        roots = {}
        for size, note in notes.items():
            try:
                checkpoint = self._verified(note)
            except CheckpointError as error:
                raise ReplicaError(f"{self.source}: checkpoint {size}: {error}") from error
            if checkpoint.size != size:
                raise ReplicaError(f"{self.source}: checkpoint {size} holds size {checkpoint.size}")
            roots[size] = checkpoint.root
        kept_notes = []
        for seq, entry in records:
            expected += 1
            if seq != expected or f'"seq":{seq},'.encode() not in entry:
                raise ReplicaError(f"{self.source}: record {expected} is missing or misnumbered")
            tree.append(merkle.leaf_hash(entry))
            if seq in roots:
                if roots[seq] != tree.root():
                    raise ReplicaError(
                        f"{self.source}: its log diverged from this copy: the tree of size "
                        f"{seq} does not match the origin's signed checkpoint (records up to "
                        f"{self.size} were copied before; was its log rewritten or restored?)"
                    )
                kept_notes.append((seq, notes[seq]))
        return records, kept_notes, tree

    def pull(self) -> ReplicaStatus:
        added = 0
        origin_size = 0
        for _ in range(MAX_BATCHES):
            answer = self._fetch(self.size)
            origin_size = int(answer.get("size", 0))
            if origin_size < self.size:
                raise ReplicaError(
                    f"{self.source} holds {origin_size} records, this copy {self.size}: its log "
                    "was truncated or restored to an earlier state"
                )
            records, checkpoints, tree = self._checked(answer)
            if not records:
                break
            self.store.append_batch(records)
            for size, note in checkpoints:
                # The origin's signed note, as it came: the copy can be checked
                # with the origin's public keys alone, and the next start re-checks it.
                self.store.add_checkpoint(size, note)
                self.verified = size
            self.tree, self.size = tree, records[-1][0]
            added += len(records)
            if self.size >= origin_size:
                break
        return ReplicaStatus(
            str(answer.get("origin", "")), self.size, self.verified, origin_size, added
        )

    def close(self) -> None:
        self.store.close()
