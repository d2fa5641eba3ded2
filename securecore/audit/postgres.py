"""The audit store on PostgreSQL (REQ-AUDIT-10, REQ-HA-2, REQ-HA-10).

Same contract as the SQLite store: a batch is one transaction, and commit
returns only after the WAL is flushed (synchronous_commit is forced on for
this connection, whatever the server's default; with synchronous replication
that is also on a second node). Streaming replication of this database
carries the audit log to the standby.

Cluster mode (`[audit] cluster = true`, several hosts writing one log): the
database, not a process, numbers the records. `append_sequenced` takes a
transaction-scoped advisory lock (SEQUENCE_LOCK), reads the highest sequence
number, numbers and commits the batch under it, so the sequence stays dense
whichever host commits. One host at a time signs checkpoints: the holder of
the session-level advisory lock SEQUENCER_LOCK on a connection of its own
(`is_sequencer`); when that connection dies (its host, or a failover), the
lock goes with it and another host takes it. A lost connection, or a server
that has become read-only, raises StoreUnavailableError: the caller reconnects
(a multi-host dsn with target_session_attrs=read-write finds the new
primary) and re-reads the store.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence

import psycopg
from psycopg import sql

from securecore.audit.store import AuditStore, Newer, Rows, StoreUnavailableError
from securecore.config import first_line

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq BIGINT PRIMARY KEY,
    entry BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    size BIGINT PRIMARY KEY,
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_cosigned (
    size BIGINT PRIMARY KEY,
    note TEXT NOT NULL
);
"""

# Fixed advisory lock keys, the same on every host of a cluster.
SEQUENCE_LOCK = zlib.crc32(b"securecore-audit/sequence")  # per batch commit
SEQUENCER_LOCK = zlib.crc32(b"securecore-audit/sequencer")  # the checkpoint signer

# A connection that is gone, a server shutting down, or a primary demoted to a
# standby (read-only): nothing a retry on the same connection fixes.
UNAVAILABLE = (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction)


@contextlib.contextmanager
def _unavailable_on_failover() -> Iterator[None]:
    try:
        yield
    except UNAVAILABLE as error:
        raise StoreUnavailableError(f"audit store: {first_line(error)}") from error


class PostgresAuditStore(AuditStore):
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._connection = self._connect()
        self._connection.execute(SCHEMA)
        # One connection, used by one thread at a time.
        self._lock = threading.Lock()
        self._sequencer: psycopg.Connection | None = None
        self._holding = False

    def _connect(self) -> psycopg.Connection:
        connection = psycopg.connect(self._dsn, autocommit=True)
        connection.execute("SET synchronous_commit = on")
        return connection

    def append_batch(self, rows: Sequence[tuple[int, bytes]]) -> None:
        with (
            self._lock,
            _unavailable_on_failover(),
            self._connection.transaction(),
            self._connection.cursor() as cursor,
        ):
            self._copy(cursor, rows)

    @staticmethod
    def _copy(cursor: psycopg.Cursor, rows: Rows) -> None:
        with cursor.copy("COPY audit_records (seq, entry) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def append_sequenced(self, after: int, build: Callable[[Newer], Rows]) -> tuple[Newer, Rows]:
        with (
            self._lock,
            _unavailable_on_failover(),
            self._begin() as transaction,
            transaction,
            self._connection.cursor() as cursor,
        ):
            # Held to the commit: every writer numbers from the committed maximum.
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SEQUENCE_LOCK,))
            newer = self._newer(cursor, after)
            rows = build(newer)
            self._copy(cursor, rows)
        return newer, rows

    @contextlib.contextmanager
    def _begin(self) -> Iterator[contextlib.ExitStack]:
        """A transaction begun (to be entered by the caller); if BEGIN finds the
        connection lost (an idle connection cut by a failover), nothing was sent
        yet: a new connection begins it instead of failing the batch."""
        for attempt in (1, 2):
            stack = contextlib.ExitStack()
            try:
                stack.enter_context(self._connection.transaction())
            except UNAVAILABLE:
                if attempt == 2 or not self._connection.closed:
                    raise
                self._connection = self._connect()
                continue
            yield stack
            return

    def newer(self, after: int) -> Newer:
        with self._lock, _unavailable_on_failover(), self._connection.cursor() as cursor:
            return self._newer(cursor, after)

    @staticmethod
    def _newer(cursor: psycopg.Cursor, after: int) -> Newer:
        # One round trip when nothing is new (an idle host asks every second).
        row = cursor.execute(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM audit_records), "
            "(SELECT COALESCE(MAX(size), 0) FROM audit_checkpoints)"
        ).fetchone()
        size, checkpointed = (int(row[0]), int(row[1])) if row else (0, 0)
        if size <= after:
            return Newer(size, checkpointed, [])
        # Up to SIZE only: outside a transaction each statement sees the newest commits,
        # and a batch committed since the first one would make rows past SIZE, which
        # the writer would take for records missing below it.
        cursor.execute(
            "SELECT seq, entry FROM audit_records WHERE seq > %s AND seq <= %s ORDER BY seq",
            (after, size),
        )
        rows = [(int(seq), bytes(entry)) for seq, entry in cursor.fetchall()]
        return Newer(size, checkpointed, rows)

    def reconnect(self) -> None:
        with self._lock:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()
            with _unavailable_on_failover():
                self._connection = self._connect()
                # A dsn without target_session_attrs=read-write may find a standby.
                row = self._connection.execute(
                    "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool"
                ).fetchone()
            if row and row[0]:
                raise StoreUnavailableError("audit store: the server takes no writes (a standby)")

    def is_sequencer(self) -> bool:
        if self._holding and self._sequencer is not None:
            try:
                self._sequencer.execute("SELECT 1")  # the lock lives as long as the session
                return True
            except psycopg.Error:
                self._release_sequencer()  # lost with its session: try to take it again
        try:
            if self._sequencer is None:
                self._sequencer = psycopg.connect(self._dsn, autocommit=True)
            row = self._sequencer.execute(
                "SELECT pg_try_advisory_lock(%s)", (SEQUENCER_LOCK,)
            ).fetchone()
            self._holding = bool(row and row[0])
        except psycopg.Error:
            self._release_sequencer()
        return self._holding

    def _release_sequencer(self) -> None:
        if self._sequencer is not None:
            with contextlib.suppress(psycopg.Error):
                self._sequencer.close()
        self._sequencer, self._holding = None, False

    def reader(self) -> Callable[[], AuditStore]:
        return functools.partial(PostgresAuditStore, self._dsn)

    def entries_between(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        with self._lock, _unavailable_on_failover(), self._connection.cursor() as cursor:
            cursor.execute(
                "SELECT seq, entry FROM audit_records WHERE seq > %s ORDER BY seq LIMIT %s",
                (after, limit),
            )
            return [(int(seq), bytes(entry)) for seq, entry in cursor.fetchall()]

    def entries(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        # A separate connection and a server-side cursor: millions of rows
        # stream without holding the writer's connection.
        with (
            _unavailable_on_failover(),
            psycopg.connect(self._dsn) as reader,
            reader.cursor(name="audit_entries") as cursor,
        ):
            cursor.execute(
                "SELECT seq, entry FROM audit_records WHERE seq > %s ORDER BY seq", (after,)
            )
            while rows := cursor.fetchmany(4096):
                for seq, entry in rows:
                    yield seq, bytes(entry)

    def size(self) -> int:
        with self._lock, _unavailable_on_failover():
            row = self._connection.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM audit_records"
            ).fetchone()
        return int(row[0]) if row else 0

    def add_checkpoint(self, size: int, note: str) -> None:
        self._upsert("audit_checkpoints", size, note)

    def checkpoints(self) -> list[tuple[int, str]]:
        return self._notes("audit_checkpoints")

    def add_cosigned(self, size: int, note: str) -> None:
        self._upsert("audit_cosigned", size, note)

    def cosigned(self) -> list[tuple[int, str]]:
        return self._notes("audit_cosigned")

    def _upsert(self, table: str, size: int, note: str) -> None:
        query = sql.SQL(
            "INSERT INTO {} (size, note) VALUES (%s, %s) "
            "ON CONFLICT (size) DO UPDATE SET note = EXCLUDED.note"
        ).format(sql.Identifier(table))
        with self._lock, _unavailable_on_failover():
            self._connection.execute(query, (size, note))

    def _notes(self, table: str) -> list[tuple[int, str]]:
        query = sql.SQL("SELECT size, note FROM {} ORDER BY size").format(sql.Identifier(table))
        with self._lock, _unavailable_on_failover():
            rows = self._connection.execute(query).fetchall()
        return [(int(size), note) for size, note in rows]

    def close(self) -> None:
        self._release_sequencer()
        self._connection.close()
