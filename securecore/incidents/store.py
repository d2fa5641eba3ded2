"""Incident records in the state database, each change audited (REQ-IR-1 to REQ-IR-4).

Every change is made inside one write transaction of the state database, and
the audit record is appended (and durable) inside it, before the commit: a
change whose audit record could not be written is rolled back, so the view
never shows what the audit log does not hold. Each timeline entry keeps the
sequence number of its audit record, which is how an auditor finds it there.

Tables (state role `incidents`: SQLite `incidents.db`, or the shared
PostgreSQL database): `incidents`, one row per incident with its current
view as JSON, and `incident_events`, its timeline.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from securecore.errors import SecureCoreError
from securecore.incidents.model import (
    CLOSED,
    ID,
    PHASES,
    RESPONSES,
    VERIFICATION_METHODS,
    VERIFIED_STAGES,
)
from securecore.storage.state_db import StateDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    year INTEGER NOT NULL,
    number INTEGER NOT NULL,
    phase TEXT NOT NULL,
    opened_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    record TEXT NOT NULL,        -- the current view, JSON (events are the timeline)
    UNIQUE (year, number)
);
CREATE TABLE IF NOT EXISTS incident_events (
    incident TEXT NOT NULL,
    number INTEGER NOT NULL,
    time REAL NOT NULL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    details TEXT NOT NULL,       -- JSON
    audit_sequence INTEGER NOT NULL,
    PRIMARY KEY (incident, number)
)
"""

Audit = Callable[[str, str, str, str, dict[str, Any]], int]


class IncidentError(SecureCoreError):
    """A change the record refuses; STATUS is how the API answers it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class IncidentStore:
    def __init__(
        self, db: StateDatabase, audit: Audit, clock: Callable[[], float] = time.time
    ) -> None:
        self._db, self.audit, self.clock = db, audit, clock
        self._lock = threading.Lock()  # one connection, shared by the request threads
        db.create(SCHEMA)

    # --- reading ------------------------------------------------------------------------

    def summaries(self) -> list[dict[str, Any]]:
        """Every incident, newest first, without its timeline."""
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM incidents ORDER BY year DESC, number DESC"
            ).fetchall()
        return [_brief(json.loads(row[0])) for row in rows]

    def get(self, incident: str) -> dict[str, Any]:
        """INCIDENT's record with its timeline (404 if there is none)."""
        with self._lock:
            record = self._record(incident)
            events = self._db.execute(
                "SELECT number, time, actor, kind, details, audit_sequence FROM incident_events "
                "WHERE incident = ? ORDER BY number",
                (incident,),
            ).fetchall()
        record["timeline"] = [
            {
                "number": number,
                "time": _iso(at),
                "actor": actor,
                "kind": kind,
                "details": json.loads(details),
                "audit_sequence": sequence,
            }
            for number, at, actor, kind, details, sequence in events
        ]
        return record

    def _record(self, incident: str) -> dict[str, Any]:
        if not ID.fullmatch(incident):
            raise IncidentError(422, f"{incident!r} is not an incident id (INC-YYYY-NNNN)")
        row = self._db.execute("SELECT record FROM incidents WHERE id = ?", (incident,)).fetchone()
        if row is None:
            raise IncidentError(404, f"no incident {incident}")
        record: dict[str, Any] = json.loads(row[0])
        return record

    # --- changes ------------------------------------------------------------------------

    def open(self, actor: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A new incident in phase detection; FIELDS: title, severity, impact, source, summary."""
        now = self.clock()
        year = time.gmtime(now).tm_year
        with self._lock, self._db.write_transaction():
            row = self._db.execute(
                "SELECT max(number) FROM incidents WHERE year = ?", (year,)
            ).fetchone()
            number = (row[0] or 0) + 1
            incident = f"INC-{year}-{number:04d}"
            record = {
                "id": incident,
                "title": fields["title"],
                "severity": fields["severity"],
                "impact": fields["impact"],
                "source": fields["source"],
                "summary": fields.get("summary", ""),
                "phase": PHASES[0],
                "opened_at": _iso(now),
                "opened_by": actor,
                "closed_at": None,
                "scope": "",
                "cause": "",
                "fixes": [],
                "follow_ups": [],
                "contained_hosts": [],
                "artifacts": [],
                "verifications": [],
                "closing": None,
                **_response(fields["severity"], now),
            }
            self._db.execute(
                "INSERT INTO incidents VALUES (?, ?, ?, ?, ?, ?, ?)",
                (incident, year, number, record["phase"], now, now, json.dumps(record)),
            )
            self._event(incident, 1, now, actor, "open", dict(fields))
        return record

    def update(self, incident: str, actor: str, change: dict[str, Any]) -> dict[str, Any]:
        """Phase (forward only), severity, impact, scope, cause; a note, fix or follow-up added."""
        if not change:
            raise IncidentError(422, "nothing to change: give at least one field")

        def apply(record: dict[str, Any], now: float) -> None:
            phase = change.get("phase")
            if phase is not None and PHASES.index(phase) < PHASES.index(record["phase"]):
                raise IncidentError(
                    409,
                    f"{incident} is in phase {record['phase']}: phases go forward only "
                    f"({' -> '.join(PHASES)})",
                )
            for key in ("phase", "severity", "impact", "scope", "cause"):
                if key in change:
                    record[key] = change[key]
            if "severity" in change:
                record.update(_response(change["severity"], _epoch(record["opened_at"])))
            if "fix" in change:
                record["fixes"].append(change["fix"])
            if "follow_up" in change:
                record["follow_ups"].append(change["follow_up"])

        return self._change(incident, actor, "update", change, apply)

    def record_action(self, incident: str, actor: str, action: dict[str, Any]) -> dict[str, Any]:
        """An action taken (contain, release, collect, backup, revoke, notify...) and what it
        produced (an artifact: a bundle or a backup, by its SHA-256); containing or releasing
        hosts keeps the list of contained hosts."""

        def apply(record: dict[str, Any], now: float) -> None:
            hosts = action.get("hosts", [])
            contained = set(record["contained_hosts"])
            if action["action"] == "contain" and action.get("outcome", "success") == "success":
                record["contained_hosts"] = sorted(contained | set(hosts))
                if record["phase"] == "detection":
                    record["phase"] = "containment"
            elif action["action"] == "release" and action.get("outcome", "success") == "success":
                record["contained_hosts"] = sorted(contained - set(hosts))
            if "artifact_sha256" in action:
                record["artifacts"].append(
                    {
                        "action": action["action"],
                        "name": action.get("artifact_name", ""),
                        "kind": action.get("artifact_kind", ""),
                        "sha256": action["artifact_sha256"],
                        "hosts": hosts,
                        "time": _iso(now),
                    }
                )

        return self._change(incident, actor, "action", action, apply)

    def record_verification(
        self, incident: str, actor: str, verification: dict[str, Any]
    ) -> dict[str, Any]:
        """A verification of eradication or recovery: a method of its stage, and, when it
        passed, the evidence it rests on (a bundle's manifest SHA-256 with checks that passed
        and none that failed, a bundle no other stage rests on). The bundle's signature is
        checked where the bundle is (`securecore incident verify --bundle`); the record keeps
        its hash, against which anyone's copy is verified again."""

        stage, method = verification["stage"], verification["method"]
        if method not in VERIFICATION_METHODS[stage]:
            raise IncidentError(
                422,
                f"{stage} is verified by {', '.join(VERIFICATION_METHODS[stage])}, not {method}",
            )
        if verification["passed"]:
            if "artifact_sha256" not in verification:
                raise IncidentError(422, "a passed verification rests on evidence: link a bundle")
            if verification.get("checks_failed", 0) or not verification.get("checks_passed"):
                raise IncidentError(
                    422,
                    "a passed verification needs checks that passed and none that failed "
                    f"(passed {verification.get('checks_passed', 0)}, "
                    f"failed {verification.get('checks_failed', 0)})",
                )

        def apply(record: dict[str, Any], now: float) -> None:
            if verification["passed"]:
                # One bundle is one run of checks: eradication and recovery are verified
                # by runs of their own.
                used = {
                    v.get("artifact_sha256")
                    for v in record["verifications"]
                    if v["stage"] != stage and v["passed"]
                }
                if verification["artifact_sha256"] in used:
                    raise IncidentError(
                        409,
                        f"this bundle already verifies another stage of {incident}; "
                        f"{stage} needs a run of its own",
                    )
            record["verifications"].append({**verification, "time": _iso(now), "by": actor})

        return self._change(incident, actor, "verification", verification, apply)

    def close(self, incident: str, actor: str, closing: dict[str, Any]) -> dict[str, Any]:
        """Closed once no host is contained and eradication and recovery are each
        verified, passed, with evidence attached."""

        def apply(record: dict[str, Any], now: float) -> None:
            missing = []
            if record["contained_hosts"]:
                missing.append(
                    f"hosts still contained: {', '.join(record['contained_hosts'])} "
                    "(release them first)"
                )
            for stage in VERIFIED_STAGES:
                passed = [
                    v
                    for v in record["verifications"]
                    if v["stage"] == stage and v["passed"] and v.get("artifact_sha256")
                ]
                if not passed:
                    missing.append(f"no passed {stage} verification with evidence attached")
            if not record["cause"]:
                missing.append("no cause recorded (update --cause)")
            if missing:
                raise IncidentError(409, f"{incident} cannot close: " + "; ".join(missing))
            record["phase"] = CLOSED
            record["closed_at"] = _iso(now)
            record["closing"] = {**closing, "by": actor}

        return self._change(incident, actor, "close", closing, apply)

    def _change(
        self,
        incident: str,
        actor: str,
        kind: str,
        details: dict[str, Any],
        apply: Callable[[dict[str, Any], float], None],
    ) -> dict[str, Any]:
        now = self.clock()
        with self._lock, self._db.write_transaction():
            record = self._record(incident)
            if record["phase"] == CLOSED:
                raise IncidentError(409, f"{incident} is closed; open a new incident")
            apply(record, now)
            self._db.execute(
                "UPDATE incidents SET phase = ?, updated_at = ?, record = ? WHERE id = ?",
                (record["phase"], now, json.dumps(record), incident),
            )
            row = self._db.execute(
                "SELECT max(number) FROM incident_events WHERE incident = ?", (incident,)
            ).fetchone()
            self._event(incident, (row[0] or 0) + 1, now, actor, kind, details)
        return record

    def _event(
        self, incident: str, number: int, now: float, actor: str, kind: str, details: dict
    ) -> None:
        # Inside the transaction: an audit record that cannot be written rolls the change back.
        sequence = self.audit(actor, f"incident.{kind}", incident, "success", details)
        self._db.execute(
            "INSERT INTO incident_events VALUES (?, ?, ?, ?, ?, ?, ?)",
            (incident, number, now, actor, kind, json.dumps(details), sequence),
        )

    def open_incidents(self) -> list[dict[str, Any]]:
        """Incidents not closed, for the metrics (severity, level, respond-by): read at every
        scrape, so only the open ones are read."""
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM incidents WHERE phase != ? ORDER BY year, number", (CLOSED,)
            ).fetchall()
        return [_brief(json.loads(row[0])) for row in rows]


def _response(severity: str, opened: float) -> dict[str, Any]:
    response = RESPONSES[severity]
    return {
        "response_level": response.response_level,
        "escalation_level": response.escalation_level,
        "team": response.team,
        "channels": list(response.channels),
        "respond_by": _iso(opened + response.respond_within_seconds),
    }


BRIEF = (
    "id",
    "title",
    "severity",
    "impact",
    "phase",
    "opened_at",
    "closed_at",
    "escalation_level",
    "team",
    "respond_by",
    "contained_hosts",
)


def _brief(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in BRIEF}


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _epoch(iso: str) -> float:
    import calendar

    return float(calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")))
