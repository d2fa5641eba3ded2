"""The service's state tables (sessions, plugins, policy) on SQLite or PostgreSQL.

SQLite (the default) keeps one database file per concern in the data
directory. PostgreSQL (`[state] backend = "postgresql"`, the active/standby
deployment, REQ-HA-2) keeps all of them in one database, which
streaming replication carries to the standby together with the audit log.

The modules write their SQL once, in the dialect both understand: `?`
placeholders (turned into `%s` for psycopg), `INSERT ... ON CONFLICT`,
`CASE` instead of SQLite's two-argument max(). Column types in schemas are
SQLite's; REAL becomes DOUBLE PRECISION on PostgreSQL (its REAL is 4 bytes,
too coarse for timestamps) and INTEGER PRIMARY KEY AUTOINCREMENT an identity
column.

Write transactions take the database's write lock first (SQLite: BEGIN
IMMEDIATE; PostgreSQL: a transaction-scoped advisory lock per database
role), so a read-then-write (count sessions, then add one) never
interleaves with another worker's or host's.

A PostgreSQL connection that fails (a failover: the server shut down, the
connection was cut, the primary became a standby) is replaced by a new one
on the next use - a multi-host dsn with target_session_attrs=read-write
finds the new primary. A statement is retried once on the new connection
only where that is safe: a read outside a transaction, and the start of a
write transaction before anything of it was sent; a write whose outcome is
unknown raises.

While no server takes writes (a switchover or a failover), the first use after
the loss keeps trying to connect for failover.WAIT_SECONDS, so a planned
switchover delays requests instead of failing them. If no primary is found by
then, this use and every later one until a connection succeeds fails at once
with StateUnavailableError (503).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from securecore.config import BackendError, Config, first_line
from securecore.errors import SecureCoreError
from securecore.storage import failover
from securecore.storage.transactions import immediate_transaction

_PLACEHOLDER = re.compile(r"\?")


class StateDatabaseError(SecureCoreError):
    """The state database cannot be opened (named in the message)."""


class StateUnavailableError(StateDatabaseError):
    """No server takes the state database's queries now (a failover under way)."""


class StateOutcomeUnknownError(StateUnavailableError):
    """A write (or a transaction) was cut off with its connection: it may have been
    committed. Not to be retried blindly."""


RECONNECT_DELAYS = (0.1, 1.0)  # back-off between attempts: first, most


class StateDatabase:
    dialect: str

    @staticmethod
    def sqlite(path: str | Path, *, synchronous: str = "FULL") -> SQLiteState:
        return SQLiteState(Path(path), synchronous)

    @staticmethod
    def postgresql(dsn: str, role: str) -> PostgresState:
        return PostgresState(dsn, role)

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    def create(self, schema: str) -> None:
        """Create the tables of SCHEMA (statements separated by ';') if missing."""
        raise NotImplementedError

    @contextmanager
    def write_transaction(self) -> Iterator[None]:
        raise NotImplementedError
        yield

    def another(self) -> StateDatabase:
        """A second connection to the same database (for a reader of its own)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


WAL_SWITCH_SECONDS = 5.0


class SQLiteState(StateDatabase):
    dialect = "sqlite"

    def __init__(self, path: Path, synchronous: str) -> None:
        self.path, self.synchronous = path, synchronous
        try:
            self._db = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=5
            )
            self._wal()
            self._db.execute(f"PRAGMA synchronous={synchronous}")
        except sqlite3.Error as error:
            raise StateDatabaseError(f"{path} ({first_line(error)})") from error

    def _wal(self) -> None:
        # Switching a new database to WAL takes an exclusive lock without waiting
        # on the busy timeout: workers starting together each try, so retry.
        deadline = time.monotonic() + WAL_SWITCH_SECONDS
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, parameters)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    def create(self, schema: str) -> None:
        self._db.executescript(schema)

    @contextmanager
    def write_transaction(self) -> Iterator[None]:
        with immediate_transaction(self._db):
            yield

    def another(self) -> SQLiteState:
        return SQLiteState(self.path, self.synchronous)

    def close(self) -> None:
        self._db.close()


class PostgresState(StateDatabase):
    dialect = "postgresql"

    def __init__(self, dsn: str, role: str) -> None:
        import psycopg  # only where PostgreSQL is configured

        self.dsn, self.role = dsn, role
        self._psycopg = psycopg
        self._reconnecting = threading.Lock()
        self._unavailable = False  # the last reconnection window found no server
        host = psycopg.conninfo.conninfo_to_dict(dsn).get("host") or ""
        self._hosts = max(1, len(str(host).split(",")))  # libpq tries each in turn
        try:
            self._connection = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as error:
            raise StateDatabaseError(
                f"[state] dsn: cannot connect ({first_line(error)})"
            ) from error
        # Each role's writers queue on their own lock, like one SQLite file each.
        self._lock_key = zlib.crc32(f"securecore-state/{role}".encode())
        self._writable: tuple[float, BaseException | None] = (0.0, None)
        self._probe: Any = None  # check_writable's own connection
        self._probe_was_kept = False
        self._probe_lock = threading.Lock()

    def _lost(self, error: BaseException) -> bool:
        """Whether ERROR means the connection is gone (then the next use reconnects)."""
        return isinstance(error, self._psycopg.OperationalError) and self._connection.closed

    def _connected(self) -> Any:
        """The connection, replaced first if the last one was lost: tried for
        failover.WAIT_SECONDS after a loss, once per use after a wait that found no
        server (until one is found)."""
        with self._reconnecting:
            if not self._connection.closed:
                return self._connection
            window = 0.0 if self._unavailable else failover.WAIT_SECONDS
            deadline, delay = time.monotonic() + window, RECONNECT_DELAYS[0]
            while True:
                # Each attempt within what is left of the wait (libpq's connect_timeout
                # is per host tried): the caller, on the event loop, is held no longer.
                left = (deadline - time.monotonic()) / self._hosts
                try:
                    self._connection = self._psycopg.connect(
                        self.dsn, autocommit=True, connect_timeout=max(1, int(left))
                    )
                except self._psycopg.OperationalError as error:
                    if time.monotonic() + delay > deadline:
                        self._unavailable = True
                        raise StateUnavailableError(
                            f"the state database: no server takes queries ({first_line(error)})"
                        ) from error
                    time.sleep(delay)
                    delay = min(delay * 2, RECONNECT_DELAYS[1])
                    continue
                self._unavailable = False
                return self._connection

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        statement = _PLACEHOLDER.sub("%s", sql)
        connection = self._connected()
        # Asked before: a lost connection's status is unknown.
        alone = connection.info.transaction_status == self._psycopg.pq.TransactionStatus.IDLE
        try:
            return connection.execute(statement, parameters)
        except self._psycopg.OperationalError as error:
            # A read outside a transaction changed nothing: ask the new primary.
            if not (self._lost(error) and alone and _is_read(sql)):
                if self._lost(error):
                    raise StateOutcomeUnknownError(
                        "the state database: the connection was lost under a statement that "
                        "cannot be repeated safely (a write, or inside a transaction: its "
                        f"outcome is unknown) ({first_line(error)})"
                    ) from error
                raise
        return self._connected().execute(statement, parameters)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._connected().cursor() as cursor:
            cursor.executemany(_PLACEHOLDER.sub("%s", sql), list(rows))

    def create(self, schema: str) -> None:
        translated = re.sub(r"\bREAL\b", "DOUBLE PRECISION", schema).replace(
            "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
        )
        with self.write_transaction():
            # Two services starting at once must not both create the tables.
            for statement in filter(str.strip, translated.split(";")):
                self._connection.execute(statement)

    @contextmanager
    def write_transaction(self) -> Iterator[None]:
        for attempt in (1, 2):
            connection = self._connected()
            stack = ExitStack()
            try:
                stack.enter_context(connection.transaction())
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            except self._psycopg.OperationalError as error:
                with suppress(self._psycopg.Error):
                    stack.close()
                # Only BEGIN and the lock were sent: nothing was written yet.
                if attempt == 2 or not self._lost(error):
                    raise
                continue
            with stack:
                yield
            return

    def check_writable(self, timeout: float = 2.0, cache: float = 1.0) -> None:
        """Raise unless the database takes writes (readiness): the primary, answering
        within TIMEOUT s; the answer is kept CACHE s (a probe hits every host).

        Asked on a connection of its own that is kept while it answers from a primary:
        a new connection per probe would cost a TLS handshake every time, and would
        fail for a moment whenever the host's client certificate and key are being
        replaced (a rotation) though the service's connections go on. A kept
        connection that fails, or finds its node demoted, is dropped and the
        question asked again at once on a new one, which libpq makes to whichever
        node is writable then: a connection gone stale since the last probe (a
        failover, a switchover) is not a database that takes no writes."""
        checked, failure = self._writable
        if time.monotonic() - checked >= cache:
            with self._probe_lock:
                # A kept connection that fails (or finds a demoted node) may only be
                # stale - the database moved since the last probe: a new one decides.
                failure = self._probe_once(timeout)
                if failure is not None and self._probe_was_kept:
                    failure = self._probe_once(timeout)
                self._writable = (time.monotonic(), failure)
        if failure is not None:
            raise failure

    def _probe_once(self, timeout: float) -> StateDatabaseError | None:
        """One readiness question on the probe connection (made if there is none);
        the connection is dropped unless the answer is "writable"."""
        failure = None
        self._probe_was_kept = self._probe is not None and not self._probe.closed
        try:
            if not self._probe_was_kept:
                self._probe = self._psycopg.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=max(2, round(timeout)),
                    # A peer that vanished (a killed host) fails the probe within
                    # TIMEOUT instead of leaving it waiting on TCP.
                    tcp_user_timeout=int(timeout * 1000),
                )
                self._probe.execute(f"SET statement_timeout = {int(timeout * 1000)}")
            row = self._probe.execute("SELECT pg_is_in_recovery()").fetchone()
            if row and row[0]:
                failure = StateDatabaseError("the state database is read-only (a standby)")
        except self._psycopg.Error as error:
            failure = StateDatabaseError(f"the state database: {first_line(error)}")
        if failure is not None and self._probe is not None:
            self._probe.close()
            self._probe = None
        return failure

    def another(self) -> PostgresState:
        return PostgresState(self.dsn, self.role)

    def close(self) -> None:
        self._connection.close()
        if self._probe is not None:
            self._probe.close()


def _is_read(sql: str) -> bool:
    return sql.lstrip().split(None, 1)[0].upper() == "SELECT"


def open_state(config: Config, role: str) -> StateDatabase:
    """The state database of ROLE (sessions, plugins, policy, incidents) as the config says, or
    BackendError naming the file and key (never the dsn: it may hold a password)."""
    if config.get("state", "backend") == "postgresql":
        dsn = config.get("state", "dsn")
        if not dsn:
            raise BackendError(f"{config.path}: [state] dsn is required with backend = postgresql")
        try:
            return StateDatabase.postgresql(dsn, role)
        except ImportError as error:
            raise BackendError(
                f"{config.path}: [state] backend = 'postgresql': psycopg is not installed"
            ) from error
        except StateDatabaseError as error:
            raise BackendError(f"{config.path}: {error}") from error
    # Policy commits skip the fsync (WAL, synchronous=NORMAL: safe against a
    # crash of the process, not of the machine) because blocks and modes are
    # also in the audit log; sessions and plugins are fsynced on every commit.
    synchronous = "NORMAL" if role == "policy" else "FULL"
    path = sqlite_path(config, role)
    try:
        return StateDatabase.sqlite(path, synchronous=synchronous)
    except StateDatabaseError as error:
        raise BackendError(
            f"{config.path}: [service] data_dir: cannot open the {role} database {error}"
        ) from error


STATE_ROLES = ("sessions", "plugins", "policy", "incidents")


def sqlite_path(config: Config, role: str) -> Path:
    """Where the SQLite backend keeps ROLE's state (the service's data directory)."""
    return Path(config.get("service", "data_dir")) / f"{role}.db"
