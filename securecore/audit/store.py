"""Durable storage of audit records: SQLite in WAL mode with synchronous=FULL.

A record is stored as its canonical entry (the exact bytes its Merkle leaf
hashes), so there is one source of truth and verification hashes what is
stored without re-encoding it. SQLite's JSON functions query the fields
(`json_extract(entry, '$.actor')`). The store is an interface (AuditStore):
SQLite is the default, PostgreSQL (securecore.audit.postgres) the other. Group
commit (many appends, one transaction, one fsync) is done by the writer in
securecore.audit.log. Only PostgreSQL implements the cluster-mode methods
(several writers on one database: append_sequenced, newer, reconnect,
is_sequencer).

Two kinds of checkpoint notes are kept beside the records. audit_checkpoints
holds each checkpoint as the origin signed it (what recovery, the replicas and
the witnesses are given). audit_cosigned holds the same notes once witnesses
have cosigned them (the origin's signature and every cosignature so far): the
witnesses keep only their newest checkpoint, so these are the anchors a log
restored from a backup is proved against after the hosts that kept them in
their witness directories are lost. A backup of the database carries them.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from securecore.audit.record import Record
from securecore.errors import SecureCoreError
from securecore.storage.transactions import immediate_transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER PRIMARY KEY,
    entry BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_cosigned (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL
);
"""


class StoreUnavailableError(SecureCoreError):
    """The database connection was lost, or the server no longer takes writes (a
    failover): the outcome of a commit under way is unknown; reconnect and re-read."""


Rows = Sequence[tuple[int, bytes]]


class Newer(NamedTuple):
    """What the store holds beyond a writer's view of it."""

    size: int  # the highest sequence number stored
    checkpointed: int  # the size of the newest signed checkpoint
    rows: Rows  # the (seq, entry) rows after the one asked for


class AuditStore(ABC):
    @abstractmethod
    def append_batch(self, rows: Sequence[tuple[int, bytes]]) -> None:
        """Insert (seq, entry) rows in one transaction and return once it is durable."""

    @abstractmethod
    def entries(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        """Every (seq, entry) with seq > AFTER, in order of sequence numbers."""

    def entries_between(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """The first LIMIT (seq, entry) with seq > AFTER, in order."""
        return list(itertools.islice(self.entries(after), limit))

    def reader(self) -> Callable[[], AuditStore] | None:
        """How to open this store again, in another process (picklable), to read it;
        None if it cannot be (verification then reads it here only)."""
        return None

    def records(self) -> Iterator[Record]:
        for _, entry in self.entries():
            yield Record.from_entry(entry)

    @abstractmethod
    def size(self) -> int: ...

    # --- several writers on one database (cluster mode; PostgreSQL only) -----------

    def append_sequenced(self, after: int, build: Callable[[Newer], Rows]) -> tuple[Newer, Rows]:
        """Commit the rows BUILD makes from what the store holds after AFTER (numbered
        from its size + 1; BUILD raising rolls back), in one transaction that holds
        the store's sequencing lock; returns what BUILD was given and the rows.
        StoreUnavailableError when the connection fails (the commit may or may not be there)."""
        raise NotImplementedError(f"{type(self).__name__} has one writer only")

    def newer(self, after: int) -> Newer:
        """What other writers committed after AFTER (StoreUnavailableError on a failover)."""
        raise NotImplementedError(f"{type(self).__name__} has one writer only")

    def reconnect(self) -> None:
        """Open a new connection (after StoreUnavailableError); StoreUnavailableError if none."""
        raise NotImplementedError(f"{type(self).__name__} has one writer only")

    def is_sequencer(self) -> bool:
        """Whether this writer is the one that signs checkpoints, taking the role
        when it is free (it ends with this store's connection: close, or a failover)."""
        raise NotImplementedError(f"{type(self).__name__} has one writer only")

    @abstractmethod
    def add_checkpoint(self, size: int, note: str) -> None: ...

    @abstractmethod
    def checkpoints(self) -> list[tuple[int, str]]: ...

    @abstractmethod
    def add_cosigned(self, size: int, note: str) -> None:
        """Keep NOTE, the checkpoint of SIZE records with its witnesses' cosignatures
        (replacing what was kept for SIZE: the caller passes every cosignature so far)."""

    @abstractmethod
    def cosigned(self) -> list[tuple[int, str]]:
        """The cosigned checkpoint notes kept, by size (unverified: check them)."""

    @abstractmethod
    def close(self) -> None: ...


class SQLiteAuditStore(AuditStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit; a committed record survives
        # a crash or power loss (audit RPO 0, REQ-AUDIT-2).
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def append_batch(self, rows: Sequence[tuple[int, bytes]]) -> None:
        with immediate_transaction(self._db):
            self._db.executemany("INSERT INTO audit_records VALUES (?, ?)", rows)

    def entries(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        cursor = self._db.execute(
            "SELECT seq, entry FROM audit_records WHERE seq > ? ORDER BY seq", (after,)
        )
        while rows := cursor.fetchmany(4096):
            yield from rows

    def entries_between(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        return self._db.execute(
            "SELECT seq, entry FROM audit_records WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()

    def reader(self) -> Callable[[], AuditStore]:
        return functools.partial(SQLiteAuditStore, self.path)

    def size(self) -> int:
        return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_records").fetchone()[0]

    def add_checkpoint(self, size: int, note: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO audit_checkpoints VALUES (?, ?)", (size, note))

    def checkpoints(self) -> list[tuple[int, str]]:
        return list(self._db.execute("SELECT size, note FROM audit_checkpoints ORDER BY size"))

    def add_cosigned(self, size: int, note: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO audit_cosigned VALUES (?, ?)", (size, note))

    def cosigned(self) -> list[tuple[int, str]]:
        return list(self._db.execute("SELECT size, note FROM audit_cosigned ORDER BY size"))

    def close(self) -> None:
        self._db.close()
