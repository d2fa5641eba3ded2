"""Policy state shared by every worker process.

Dynamic blocks, account locks, login failures and modes (emergency,
shutdown) live in the state database (state_db: SQLite `policy.db`, or
PostgreSQL); token buckets and transfer windows in shared counters on the
host (`policy.counters`, see counters.py). Either way a limit or a block
holds across all workers of the service, not per process.

Blocks and modes are read on every request but change rarely, so each
process keeps them in memory and reloads them when the database changed:
every change of blocks or modes bumps the one-row `policy_version` table in
the same transaction, and each request reads only that number, once
(`view()`: the blocks and modes as of that look, for every step of one
decision). A block therefore takes effect on the very next request everywhere.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

from securecore.policy.counters import SharedCounters
from securecore.storage.state_db import SQLiteState, StateDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    kind TEXT NOT NULL,          -- ip | principal | client
    subject TEXT NOT NULL,
    until REAL NOT NULL,         -- Infinity: until an operator clears it
    reason TEXT NOT NULL,
    PRIMARY KEY (kind, subject)
);
CREATE TABLE IF NOT EXISTS failures (
    account TEXT NOT NULL,       -- the principal that presented the refused credential
    source TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_time ON failures (time);
CREATE TABLE IF NOT EXISTS modes (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_version (
    id INTEGER PRIMARY KEY,
    version INTEGER NOT NULL
);
INSERT INTO policy_version VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
"""
BUMP = "UPDATE policy_version SET version = version + 1 WHERE id = 1"


@dataclass(frozen=True)
class PolicyView:
    """Blocks and modes as committed when one decision began (never changed: a reload
    makes a new view, so a decision reads one consistent state)."""

    blocks: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)

    def blocked(self, kind: str, subject: str, now: float) -> str | None:
        found = self.blocks.get((kind, subject))
        return found[1] if found and found[0] > now else None

    def mode(self, name: str, default: str = "") -> str:
        return self.modes.get(name, default)


class PolicyState:
    def __init__(
        self, database: str | Path | StateDatabase, counters: str | Path | None = None
    ) -> None:
        """DATABASE: a state database, or the path of a SQLite file; COUNTERS: the
        shared counter file (next to a SQLite file if not given)."""
        if not isinstance(database, StateDatabase):
            database = StateDatabase.sqlite(database, synchronous="NORMAL")
        if counters is None:
            if not isinstance(database, SQLiteState):  # the one sqlite dialect
                raise ValueError("the shared counter file must be named with PostgreSQL")
            counters = database.path.with_suffix(".counters")
        self.db = database
        self.db.create(SCHEMA)
        self.lock = threading.Lock()
        self.counters = SharedCounters(counters)
        self._seen_version = -1
        self._view = PolicyView()

    def view(self) -> PolicyView:
        """Blocks and modes as committed now: reloaded if anyone committed a change
        since the last look (one statement when nothing changed)."""
        # Under the lock: a read must not overlap a write on this shared
        # connection (the write would fail at once if another worker committed).
        with self.lock:
            version = self.db.execute("SELECT version FROM policy_version").fetchone()[0]
            if version != self._seen_version:
                self._seen_version = version
                self._view = PolicyView(
                    {
                        (kind, subject): (until, reason)
                        for kind, subject, until, reason in self.db.execute(
                            "SELECT kind, subject, until, reason FROM blocks"
                        )
                    },
                    dict(self.db.execute("SELECT name, value FROM modes")),
                )
            return self._view

    def blocked(self, kind: str, subject: str, now: float) -> str | None:
        return self.view().blocked(kind, subject, now)

    def block(self, kind: str, subject: str, until: float, reason: str) -> None:
        """Block SUBJECT until UNTIL (math.inf: until cleared); a longer block in force
        stays, with its reason."""
        with self.lock, self.db.write_transaction():
            self.db.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, ?) ON CONFLICT (kind, subject) DO UPDATE "
                "SET reason = CASE WHEN blocks.until > excluded.until THEN blocks.reason "
                "ELSE excluded.reason END, "
                "until = CASE WHEN blocks.until > excluded.until THEN blocks.until "
                "ELSE excluded.until END",
                (kind, subject, until, reason),
            )
            self.db.execute(BUMP)

    def unblock(self, kinds: str | tuple[str, ...], subject: str) -> int:
        """Remove the blocks of SUBJECT of the given kind(s); how many there were."""
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        removed = 0
        with self.lock, self.db.write_transaction():
            for kind in kinds:
                removed += self.db.execute(
                    "DELETE FROM blocks WHERE kind = ? AND subject = ?", (kind, subject)
                ).rowcount
            self.db.execute(BUMP)
        return removed

    def active_blocks(self, now: float) -> list[dict]:
        """The blocks in force; `until` is None for those that last until cleared."""
        with self.lock:
            rows = self.db.execute(
                "SELECT kind, subject, until, reason FROM blocks WHERE until > ? ORDER BY until",
                (now,),
            ).fetchall()
        return [
            {
                "kind": kind,
                "subject": subject,
                "until": until if until != math.inf else None,
                "reason": reason,
            }
            for kind, subject, until, reason in rows
        ]

    def mode(self, name: str, default: str = "") -> str:
        return self.view().mode(name, default)

    def set_mode(self, name: str, value: str) -> None:
        with self.lock, self.db.write_transaction():
            self.db.execute(
                "INSERT INTO modes VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = ?",
                (name, value, value),
            )
            self.db.execute(BUMP)

    def close(self) -> None:
        self.counters.close()
        self.db.close()
