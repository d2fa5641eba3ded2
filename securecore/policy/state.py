"""Policy state shared by every worker process.

Dynamic blocks, account locks, login failures and modes (emergency,
shutdown) live in one SQLite database (WAL); token buckets and transfer
windows in shared counters next to it (`policy.counters`, see counters.py).
Either way a limit or a block holds across all workers of the service, not
per process.

Blocks and modes are read on every request but change rarely, so each
process keeps them in memory and reloads them when the database changed:
`PRAGMA data_version` moves whenever another connection (another worker, or
the operator's tool) commits, and this connection's own writes mark the copy
stale. A block therefore takes effect on the very next request everywhere.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from securecore.policy.counters import SharedCounters

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    kind TEXT NOT NULL,          -- ip | account | session
    subject TEXT NOT NULL,
    until REAL NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (kind, subject)
);
CREATE TABLE IF NOT EXISTS failures (
    account TEXT NOT NULL,
    source TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_time ON failures (time);
CREATE TABLE IF NOT EXISTS modes (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class PolicyState:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # busy_timeout: workers wait for each other's short write transactions.
        self.db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=5
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()
        self.counters = SharedCounters(self.path.with_suffix(".counters"))
        self._seen_version = -1
        self._blocks: dict[tuple[str, str], tuple[float, str]] = {}
        self._modes: dict[str, str] = {}

    def _current(self) -> None:
        """Reload blocks and modes if anyone committed a change since the last look."""
        # Under the lock: a read must not overlap a write on this shared
        # connection (the write would fail at once if another worker committed).
        with self.lock:
            version = self.db.execute("PRAGMA data_version").fetchone()[0]
            if version == self._seen_version:
                return
            self._seen_version = version
            self._blocks = {
                (kind, subject): (until, reason)
                for kind, subject, until, reason in self.db.execute(
                    "SELECT kind, subject, until, reason FROM blocks"
                )
            }
            self._modes = dict(self.db.execute("SELECT name, value FROM modes"))

    def _changed(self) -> None:
        # data_version does not move for this connection's own commits.
        self._seen_version = -1

    def blocked(self, kind: str, subject: str, now: float) -> str | None:
        self._current()
        found = self._blocks.get((kind, subject))
        return found[1] if found and found[0] > now else None

    def block(self, kind: str, subject: str, until: float, reason: str) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, ?) ON CONFLICT (kind, subject) DO UPDATE "
                "SET until = max(until, excluded.until), reason = excluded.reason",
                (kind, subject, until, reason),
            )
            self._changed()

    def unblock(self, kind: str, subject: str) -> int:
        with self.lock:
            removed = self.db.execute(
                "DELETE FROM blocks WHERE kind = ? AND subject = ?", (kind, subject)
            ).rowcount
            self._changed()
            return removed

    def active_blocks(self, now: float) -> list[dict]:
        with self.lock:
            rows = self.db.execute(
                "SELECT kind, subject, until, reason FROM blocks WHERE until > ? ORDER BY until",
                (now,),
            ).fetchall()
        return [dict(zip(("kind", "subject", "until", "reason"), r, strict=True)) for r in rows]

    def mode(self, name: str, default: str = "") -> str:
        self._current()
        return self._modes.get(name, default)

    def set_mode(self, name: str, value: str) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO modes VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = ?",
                (name, value, value),
            )
            self._changed()

    def close(self) -> None:
        self.counters.close()
        self.db.close()
