"""Policy state shared by every worker process: one SQLite database (WAL).

Dynamic blocks, account locks, failure windows and token buckets live here,
so a limit or a block holds across all workers of the service, not per
process.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

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
CREATE TABLE IF NOT EXISTS transfers (
    client TEXT NOT NULL,
    time REAL NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS transfers_client ON transfers (client, time);
CREATE TABLE IF NOT EXISTS buckets (
    key TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    updated REAL NOT NULL
);
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

    def blocked(self, kind: str, subject: str, now: float) -> str | None:
        row = self.db.execute(
            "SELECT reason FROM blocks WHERE kind = ? AND subject = ? AND until > ?",
            (kind, subject, now),
        ).fetchone()
        return row[0] if row else None

    def block(self, kind: str, subject: str, until: float, reason: str) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, ?) ON CONFLICT (kind, subject) DO UPDATE "
                "SET until = max(until, excluded.until), reason = excluded.reason",
                (kind, subject, until, reason),
            )

    def unblock(self, kind: str, subject: str) -> int:
        with self.lock:
            return self.db.execute(
                "DELETE FROM blocks WHERE kind = ? AND subject = ?", (kind, subject)
            ).rowcount

    def active_blocks(self, now: float) -> list[dict]:
        rows = self.db.execute(
            "SELECT kind, subject, until, reason FROM blocks WHERE until > ? ORDER BY until", (now,)
        )
        return [dict(zip(("kind", "subject", "until", "reason"), r, strict=True)) for r in rows]

    def mode(self, name: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM modes WHERE name = ?", (name,)).fetchone()
        return row[0] if row else default

    def set_mode(self, name: str, value: str) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO modes VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = ?",
                (name, value, value),
            )

    def close(self) -> None:
        self.db.close()
