"""Durable storage of audit records: SQLite in WAL mode with synchronous=FULL.

A record is stored as its canonical entry (the exact bytes its Merkle leaf
hashes), so there is one source of truth and verification hashes what is
stored without re-encoding it. SQLite's JSON functions query the fields
(`json_extract(entry, '$.actor')`). The store is an interface (AuditStore) so
that PostgreSQL can be added; SQLite is the default. Group commit (many
appends, one transaction, one fsync) is done by the writer in
securecore.audit.log.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path

from securecore.audit.record import Record
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
"""


class AuditStore(ABC):
    @abstractmethod
    def append_batch(self, rows: Sequence[tuple[int, bytes]]) -> None:
        """Insert (seq, entry) rows in one transaction and return once it is durable."""

    @abstractmethod
    def entries(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        """Every (seq, entry) with seq > AFTER, in order of sequence numbers."""

    def records(self) -> Iterator[Record]:
        for _, entry in self.entries():
            yield Record.from_entry(entry)

    @abstractmethod
    def size(self) -> int: ...

    @abstractmethod
    def add_checkpoint(self, size: int, note: str) -> None: ...

    @abstractmethod
    def checkpoints(self) -> list[tuple[int, str]]: ...

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

    def size(self) -> int:
        return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_records").fetchone()[0]

    def add_checkpoint(self, size: int, note: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO audit_checkpoints VALUES (?, ?)", (size, note))

    def checkpoints(self) -> list[tuple[int, str]]:
        return list(self._db.execute("SELECT size, note FROM audit_checkpoints ORDER BY size"))

    def close(self) -> None:
        self._db.close()
