"""The audit store on PostgreSQL (the active/standby deployment, REQ-AUDIT-10, REQ-HA-2).

Same contract as the SQLite store: a batch is one transaction, and commit
returns only after the WAL is flushed (synchronous_commit is forced on for
this connection, whatever the server's default). Streaming replication of
this database carries the audit log to the standby.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import psycopg

from securecore.audit.store import AuditStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq BIGINT PRIMARY KEY,
    entry BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    size BIGINT PRIMARY KEY,
    note TEXT NOT NULL
);
"""


class PostgresAuditStore(AuditStore):
    def __init__(self, dsn: str) -> None:
        self._connection = psycopg.connect(dsn, autocommit=True)
        self._connection.execute("SET synchronous_commit = on")
        self._connection.execute(SCHEMA)
        # One connection, used by one thread at a time.
        self._lock = threading.Lock()

    def append_batch(self, rows: Sequence[tuple[int, bytes]]) -> None:
        with (
            self._lock,
            self._connection.transaction(),
            self._connection.cursor() as cursor,
            cursor.copy("COPY audit_records (seq, entry) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def entries(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        # A separate connection and a server-side cursor: millions of rows
        # stream without holding the writer's connection.
        with (
            psycopg.connect(self._connection.info.dsn) as reader,
            reader.cursor(name="audit_entries") as cursor,
        ):
            cursor.execute(
                "SELECT seq, entry FROM audit_records WHERE seq > %s ORDER BY seq", (after,)
            )
            while rows := cursor.fetchmany(4096):
                for seq, entry in rows:
                    yield seq, bytes(entry)

    def size(self) -> int:
        with self._lock:
            row = self._connection.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM audit_records"
            ).fetchone()
        return int(row[0]) if row else 0

    def add_checkpoint(self, size: int, note: str) -> None:
        with self._lock:
            self._connection.execute(
                "INSERT INTO audit_checkpoints (size, note) VALUES (%s, %s) "
                "ON CONFLICT (size) DO UPDATE SET note = EXCLUDED.note",
                (size, note),
            )

    def checkpoints(self) -> list[tuple[int, str]]:
        with self._lock:
            rows = self._connection.execute(
                "SELECT size, note FROM audit_checkpoints ORDER BY size"
            ).fetchall()
        return [(int(size), note) for size, note in rows]

    def close(self) -> None:
        self._connection.close()
