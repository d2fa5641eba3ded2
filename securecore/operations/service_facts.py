"""`securecore facts -c CONFIG`: the service's state as JSON, for the compliance checks.

Read-only, run on the core host as the service user (it opens the key ring):
  ready      /readyz answered over mutual TLS with the host's certificate
  audit      the audit log verified against the newest checkpoint a pinned witness
             cosigned (tree, leaf file, signed checkpoints), its size, records not yet
             under a signed / a witnessed checkpoint, each witness's last cosigned size
  keys       the age in days of the newest signing key and key-encryption key
  backup     the newest verified backup in [backup] directory (signed manifest,
             archive hash) and its signed age in hours; manifests that fail are
             listed under unverified, never counted
  plugins    every registered plugin's state and score, the lowest active score,
             the suspended ones
  events     security events from the audit log (the report sections of REQ-COMP-12):
             counts per action and outcome over the last 1, 7 and 31 days, and the
             incidents and responses of the last 31 days (time, action, target,
             outcome - never a record's details), and the incident records open now
             or closed in the last 31 days (id, severity, phase, times, hosts contained)
Nothing secret is printed: no key material, no PIN, no token.
"""

from __future__ import annotations

import datetime
import http.client
import json
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

from securecore import config as configuration
from securecore.audit.factory import anchored_verification, open_store
from securecore.audit.record import Record
from securecore.audit.store import AuditStore
from securecore.audit.witness import STATUS_FILE
from securecore.incidents.store import IncidentStore
from securecore.keys.base import KeyRing
from securecore.keys.factory import open_key_ring
from securecore.operations.backup import signed_backups
from securecore.plugin_registry.registry import PluginRegistry
from securecore.storage.state_db import open_state
from securecore.tls import TLSPolicy


def _ready(config: configuration.Config) -> bool:
    policy = TLSPolicy.from_file(config.get("tls", "policy"))
    host, _, port = config.get("service", "listen").rpartition(":")
    wildcard = host in ("0.0.0.0", "", "[::]")  # noqa: S104 - not a bind: reached on loopback
    host = "127.0.0.1" if wildcard else host.strip("[]")
    context = policy.client_context()
    context.check_hostname = False  # the chain is checked; the service names its own address
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _witness_status(config: configuration.Config) -> dict[str, Any]:
    """What the service's WitnessPusher last wrote: per witness the size it cosigned."""
    path = Path(config.get("audit", "witness_dir")) / STATUS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _audit(config: configuration.Config, ring: KeyRing) -> tuple[dict[str, Any], dict[str, Any]]:
    # Anchored: the newest checkpoint a pinned witness cosigned bounds what the log must hold.
    result, problems = anchored_verification(config, ring)
    store = open_store(config)
    try:
        checkpoints = store.checkpoints()
        size = store.size()
        events = _events(store, size)
    finally:
        store.close()
    last = checkpoints[-1][0] if checkpoints else 0
    return {
        "verified": result.ok,
        "problem": result.problem,
        "records": size,
        "checkpoints": len(checkpoints),
        "uncheckpointed": size - last,
        "witnessed_size": result.witnessed,
        "witnessed_by": list(result.witnesses),
        "unwitnessed": size - (result.witnessed or 0),
        "witnesses_configured": len(config.get("audit", "witnesses")),
        "witness_problems": problems,
        "witnesses": _witness_status(config),
    }, events


# What the reports count: security-relevant actions, and among them incidents (something
# happened to the service) and responses (what people or the service did about it).
# An incident record opened or closed is an incident; what is done about it a response.
INCIDENTS = (
    "intrusion.",
    "emergency.shutdown",
    "plugin.suspended",
    "plugin.revoked",
    "incident.open",
    "incident.close",
)
RESPONSES = (
    "intrusion.",
    "emergency.recover",
    "acl.block",
    "acl.unblock",
    "session.revoke",
    "incident.action",
    "incident.update",
    "incident.verification",
)
WINDOWS = {"1d": 1, "7d": 7, "31d": 31}
# The newest records looked at: the reports cover a month, and a month of a busy
# service is well under this; it bounds the time a facts run can take.
EVENT_SCAN_LIMIT = 500_000
LISTED_EVENTS = 200


def _security_event(record: Record) -> bool:
    if record.action.startswith("policy."):
        return record.outcome == "denied"
    return record.action == "auth.failure" or record.action.startswith(INCIDENTS + RESPONSES)


def _events(store: AuditStore, size: int) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    since = {name: now - datetime.timedelta(days=days) for name, days in WINDOWS.items()}
    counts: dict[str, Counter] = {name: Counter() for name in WINDOWS}
    incidents, responses = [], []
    for _, entry in store.entries(after=max(0, size - EVENT_SCAN_LIMIT)):
        record = Record.from_entry(entry)
        when = datetime.datetime.fromisoformat(record.timestamp)
        if when < since["31d"] or not _security_event(record):
            continue
        for name, start in since.items():
            if when >= start:
                counts[name][f"{record.action} {record.outcome}"] += 1
        brief = {
            "at": record.timestamp,
            "action": record.action,
            "target": record.target,
            "outcome": record.outcome,
        }
        if record.action.startswith(INCIDENTS):
            incidents.append(brief)
        if record.action.startswith(RESPONSES):
            responses.append(brief)
    return {
        "counts": {name: dict(sorted(found.items())) for name, found in counts.items()},
        "incidents": incidents[-LISTED_EVENTS:],
        "responses": responses[-LISTED_EVENTS:],
    }


def _keys(ring: KeyRing) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    ages: dict[str, Any] = {}
    for label, name in (("signing", ring.signing_key), ("kek", ring.kek)):
        kid = ring.current(name)
        made = ring.backend.created(kid)
        ages[f"{label}_kid"] = kid
        ages[f"{label}_age_days"] = (now - made).days if made else None
    return ages


def _backup(config: configuration.Config, ring: KeyRing) -> dict[str, Any]:
    """The newest backup whose signed manifest and archive verify; the others are
    listed, never counted (anyone able to write the directory can drop a manifest)."""
    if config.get("audit", "backend") == "postgresql":
        # The state is the shared database's, and so are its backups (pgBackRest,
        # checked on the repository host): this host has none of its own to make.
        return {"kept_by": "database", "newest": None, "newest_age_hours": None, "unverified": []}
    directory = config.get("backup", "directory")
    backups, refused = signed_backups(ring, directory) if directory else ([], [])
    if not backups:
        return {"kept_by": "host", "newest": None, "newest_age_hours": None, "unverified": refused}
    created, path, _ = backups[-1]
    age = datetime.datetime.now(datetime.UTC) - created
    return {
        "kept_by": "host",
        "newest": path.name,
        "newest_age_hours": round(age.total_seconds() / 3600, 1),
        "unverified": refused,
    }


def _plugins(config: configuration.Config) -> dict[str, Any]:
    registry = PluginRegistry(
        open_state(config, "plugins"), vendors={}, minimum_security_level=0, probe=lambda *_: {}
    )
    plugins = registry.summary()
    active = [p["score"] for p in plugins if p["state"] == "active"]
    return {
        "registered": {p["name"]: {"state": p["state"], "score": p["score"]} for p in plugins},
        "active_count": len(active),
        "lowest_active_score": min(active) if active else None,
        "suspended": sorted(p["name"] for p in plugins if p["state"] == "suspended"),
    }


def _incident_records(config: configuration.Config) -> list[dict[str, Any]]:
    """The incident records open now or closed in the last 31 days (the reports' period)."""

    def no_change(*_: Any) -> int:
        raise RuntimeError("service facts change nothing")

    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=WINDOWS["31d"])
    return [
        record
        for record in IncidentStore(open_state(config, "incidents"), no_change).summaries()
        if record["closed_at"] is None
        or datetime.datetime.fromisoformat(record["closed_at"]) >= since
    ]


def service_facts(config: configuration.Config) -> dict[str, Any]:
    ring = open_key_ring(config)
    try:
        audit, events = _audit(config, ring)
        events["records"] = _incident_records(config)
        return {
            "service": {"ready": _ready(config)},
            "audit": audit,
            "events": events,
            "keys": _keys(ring),
            "backup": _backup(config, ring),
            "plugins": _plugins(config),
        }
    finally:
        ring.backend.close()
