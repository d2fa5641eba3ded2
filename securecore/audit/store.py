"""Durable storage of audit records: SQLite in WAL mode with synchronous=FULL.

The store is an interface (AuditStore) so that PostgreSQL can be added; the
SQLite implementation is the default. A record is durable when its
transaction has committed; group commit (several appends, one commit and one
fsync) is done by the writer in securecore.audit.log.
"""

from __future__ import annotations

import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path

from securecore.audit.record import Record

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER PRIMARY KEY,
    timestamp TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL
);
"""


class AuditStore(ABC):
    @abstractmethod
    def append_batch(self, records: Sequence[Record]) -> None:
        """Insert the records in one transaction and return once it is durable."""

    @abstractmethod
    def records(self) -> Iterator[Record]:
        """Every record, in storage order of sequence numbers."""

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
        # a crash or power loss (audit RPO 0, seed 001 8.1).
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def append_batch(self, records: Sequence[Record]) -> None:
        rows = [
            (r.seq, r.timestamp, r.actor, r.action, r.target, r.outcome,
             json.dumps(r.details, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
            for r in records
        ]  # fmt: skip
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def records(self) -> Iterator[Record]:
        cursor = self._db.execute(
            "SELECT seq, timestamp, actor, action, target, outcome, details "
            "FROM audit_records ORDER BY seq"
        )
        for seq, timestamp, actor, action, target, outcome, details in cursor:
            yield Record(seq, timestamp, actor, action, target, outcome, json.loads(details))

    def size(self) -> int:
        return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_records").fetchone()[0]

    def add_checkpoint(self, size: int, note: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO audit_checkpoints VALUES (?, ?)", (size, note))

    def checkpoints(self) -> list[tuple[int, str]]:
        return list(self._db.execute("SELECT size, note FROM audit_checkpoints ORDER BY size"))

    def close(self) -> None:
        self._db.close()
