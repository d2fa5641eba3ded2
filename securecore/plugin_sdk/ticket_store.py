"""The reference plugin: a ticket store (incidents and requests) built on the SDK.

Operations (all through the core's secure call flow):
  tickets.create {title, body?, priority?}       -> the ticket
  tickets.get    {id}                            -> the ticket with its history
  tickets.list   {status?, limit?}               -> tickets, newest first
  tickets.update {id, status?, comment?}         -> the ticket
Priorities: low, normal, high, critical. States: open, in_progress, resolved,
closed (closed is final). Every change is kept in the ticket's history with
the calling principal the core vouches for.

    securecore plugin ticket-store --tls-policy P --state-dir D --listen HOST:PORT \\
        --core-principal core/HOST [--core-principal core/HOST2 ...] \\
        [--register CORE_URL --endpoint URL --vendor V --security-level N]
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from securecore.plugin_sdk.server import PluginError

PRIORITIES = ("low", "normal", "high", "critical")
STATES = ("open", "in_progress", "resolved", "closed")
SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    priority TEXT NOT NULL,
    status TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    ticket INTEGER NOT NULL REFERENCES tickets (id),
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    change TEXT NOT NULL
);
"""
COLUMNS = ("id", "title", "body", "priority", "status", "created_by", "created_at", "updated_at")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _text(args: dict[str, Any], key: str, limit: int, required: bool = True) -> str | None:
    value = args.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise PluginError("invalid", f"{key}: a non-empty string of at most {limit} characters")
    return value.strip()


class TicketStore:
    def __init__(self, database: str | Path) -> None:
        self._db = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def _ticket(self, ticket_id: Any, with_history: bool = False) -> dict[str, Any]:
        if not isinstance(ticket_id, int) or isinstance(ticket_id, bool):
            raise PluginError("invalid", "id: an integer")
        row = self._db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM tickets WHERE id = ?",  # noqa: S608 - constant
            (ticket_id,),
        ).fetchone()
        if row is None:
            raise PluginError("not_found", f"no ticket {ticket_id}")
        ticket = dict(zip(COLUMNS, row, strict=True))
        if with_history:
            ticket["history"] = [
                {"at": at, "actor": actor, "change": json.loads(change)}
                for at, actor, change in self._db.execute(
                    "SELECT at, actor, change FROM history WHERE ticket = ? ORDER BY rowid",
                    (ticket_id,),
                )
            ]
        return ticket

    def create(self, args: dict[str, Any], caller: str) -> dict[str, Any]:
        title = _text(args, "title", 200)
        body = _text(args, "body", 20_000, required=False) or ""
        priority = args.get("priority", "normal")
        if priority not in PRIORITIES:
            raise PluginError("invalid", f"priority: one of {', '.join(PRIORITIES)}")
        now = _now()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO tickets (title, body, priority, status, created_by, created_at, "
                "updated_at) VALUES (?, ?, ?, 'open', ?, ?, ?)",
                (title, body, priority, caller, now, now),
            )
            self._db.execute(
                "INSERT INTO history VALUES (?, ?, ?, ?)",
                (cursor.lastrowid, now, caller, json.dumps({"created": priority})),
            )
            return self._ticket(cursor.lastrowid)

    def get(self, args: dict[str, Any], caller: str) -> dict[str, Any]:
        with self._lock:
            return self._ticket(args.get("id"), with_history=True)

    def list(self, args: dict[str, Any], caller: str) -> list[dict[str, Any]]:
        status, limit = args.get("status"), args.get("limit", 50)
        if status is not None and status not in STATES:
            raise PluginError("invalid", f"status: one of {', '.join(STATES)}")
        if not isinstance(limit, int) or not 1 <= limit <= 500:
            raise PluginError("invalid", "limit: an integer 1-500")
        query = f"SELECT {', '.join(COLUMNS)} FROM tickets"  # noqa: S608 - constant
        parameters: tuple = ()
        if status:
            query, parameters = query + " WHERE status = ?", (status,)
        with self._lock:
            rows = self._db.execute(f"{query} ORDER BY id DESC LIMIT {limit}", parameters)
            return [dict(zip(COLUMNS, row, strict=True)) for row in rows]

    def update(self, args: dict[str, Any], caller: str) -> dict[str, Any]:
        status = args.get("status")
        comment = _text(args, "comment", 5_000, required=False)
        if status is None and comment is None:
            raise PluginError("invalid", "give a status, a comment, or both")
        if status is not None and status not in STATES:
            raise PluginError("invalid", f"status: one of {', '.join(STATES)}")
        now = _now()
        with self._lock:
            ticket = self._ticket(args.get("id"))
            if ticket["status"] == "closed":
                raise PluginError("closed", f"ticket {ticket['id']} is closed")
            change = {
                key: value
                for key, value in (("status", status), ("comment", comment))
                if value is not None
            }
            if status is not None:
                self._db.execute(
                    "UPDATE tickets SET status = ?, updated_at = ? WHERE id = ?",
                    (status, now, ticket["id"]),
                )
            self._db.execute(
                "INSERT INTO history VALUES (?, ?, ?, ?)",
                (ticket["id"], now, caller, json.dumps(change)),
            )
            return self._ticket(ticket["id"])

    def handlers(self) -> dict[str, Any]:
        return {
            "tickets.create": self.create,
            "tickets.get": self.get,
            "tickets.list": self.list,
            "tickets.update": self.update,
        }
