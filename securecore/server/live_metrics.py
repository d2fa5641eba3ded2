"""What /metrics reads from the running service's state at scrape time."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cryptography import x509

from securecore.audit.log import AuditLog
from securecore.audit.writer_service import RemoteAuditLog
from securecore.errors import SecureCoreError
from securecore.incidents.store import IncidentStore
from securecore.monitoring.metrics import LiveState
from securecore.plugin_registry.registry import PluginRegistry
from securecore.sessions.manager import SessionManager
from securecore.tls import TLSPolicy

log = logging.getLogger(__name__)


def _certificate_ends(policy: TLSPolicy) -> dict[tuple[str, ...], float]:
    ends: dict[tuple[str, ...], float] = {}
    for name in ("server_certificate", "client_certificate"):
        path = getattr(policy, name)
        if path is not None and Path(path).exists():
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
            end = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after
            ends[(name,)] = end.timestamp()
    return ends


def _open(incidents: IncidentStore | None) -> list[dict]:
    """The open incidents; none while the state database cannot be read (the rest of
    /metrics is still served, and the alert outlasts a gap: keep_firing_for)."""
    if incidents is None:
        return []
    try:
        return incidents.open_incidents()
    except SecureCoreError as error:
        log.warning("open incidents not exported: %s", error)
        return []


def witness_cosignatures(status: Path | None) -> dict[str, dict[tuple[str, ...], float]]:
    """Per witness, the size and time of the newest checkpoint it cosigned, as this host's
    witness pusher last wrote them (witness-status.json; nothing before its first push)."""
    found: dict[str, dict[tuple[str, ...], float]] = {"size": {}, "time": {}}
    try:
        document = json.loads(status.read_text(encoding="utf-8")) if status else {}
    except (OSError, ValueError):
        document = {}
    for name, entry in document.items() if isinstance(document, dict) else ():
        if isinstance(entry, dict) and entry.get("size") is not None:
            found["size"][(name,)] = float(entry["size"])
            found["time"][(name,)] = float(entry.get("cosigned_at") or 0)
    return found


def live_state(
    registry: PluginRegistry,
    sessions: SessionManager,
    audit: AuditLog | RemoteAuditLog,
    policy: TLSPolicy,
    witness_status: Path | None = None,
    witness_deadline: float = 0.0,
    incidents: IncidentStore | None = None,
) -> LiveState:
    def by_plugin(key: str) -> dict[tuple[str, ...], float]:
        return {(plugin["name"],): float(plugin[key]) for plugin in registry.summary()}

    def success_ratio() -> dict[tuple[str, ...], float]:
        return {
            (plugin["name"],): plugin["successes"] / plugin["calls"] if plugin["calls"] else 1.0
            for plugin in registry.summary()
        }

    def plugin_states() -> dict[tuple[str, ...], float]:
        counts = dict.fromkeys(("pending", "active", "suspended", "revoked"), 0.0)
        for plugin in registry.summary():
            counts[plugin["state"]] = counts.get(plugin["state"], 0.0) + 1
        return {(state,): number for state, number in counts.items()}

    def open_incidents() -> dict[tuple[str, ...], float]:
        # One series per open incident, which the monitoring routes by escalation level
        # (REQ-IR-5); closed ones are not exported, so the series are as many as are open.
        return {
            (
                i["id"],
                i["severity"],
                str(i["escalation_level"]),
                i["team"],
                i["respond_by"],
            ): 1.0
            for i in _open(incidents)
        }

    return LiveState(
        {
            "securecore_incident_open": open_incidents,
            "securecore_plugin_trust_score": lambda: by_plugin("score"),
            "securecore_plugin_calls": lambda: by_plugin("calls"),
            "securecore_plugin_success_ratio": success_ratio,
            "securecore_plugins": plugin_states,
            "securecore_sessions_active": lambda: float(len(sessions.list_live())),
            "securecore_audit_records": lambda: float(audit.size),
            "securecore_audit_uncheckpointed_records": lambda: float(audit.uncheckpointed),
            "securecore_certificate_not_after_seconds": lambda: _certificate_ends(policy),
            "securecore_audit_witness_cosigned_size": lambda: witness_cosignatures(witness_status)[
                "size"
            ],
            "securecore_audit_witness_cosigned_timestamp_seconds": lambda: witness_cosignatures(
                witness_status
            )["time"],
            "securecore_audit_witness_deadline_seconds": lambda: witness_deadline,
        },
        labels={
            "securecore_incident_open": [
                "incident",
                "incident_severity",
                "escalation_level",
                "team",
                "respond_by",
            ],
            "securecore_plugin_trust_score": ["plugin"],
            "securecore_plugin_calls": ["plugin"],
            "securecore_plugin_success_ratio": ["plugin"],
            "securecore_plugins": ["state"],
            "securecore_certificate_not_after_seconds": ["name"],
            "securecore_audit_witness_cosigned_size": ["witness"],
            "securecore_audit_witness_cosigned_timestamp_seconds": ["witness"],
        },
        help_text={
            "securecore_incident_open": "Each open security incident (1), by escalation level",
            "securecore_plugin_trust_score": "Trust score of each plugin (0-100)",
            "securecore_plugin_calls": "Calls made to each plugin",
            "securecore_plugin_success_ratio": "Share of successful calls to each plugin",
            "securecore_plugins": "Plugins by state",
            "securecore_sessions_active": "Sessions neither revoked nor idle",
            "securecore_audit_records": "Records in the audit log",
            "securecore_audit_uncheckpointed_records": "Records not yet in a signed checkpoint",
            "securecore_certificate_not_after_seconds": "End of validity of the TLS certificates",
            "securecore_audit_witness_cosigned_size": "Size of the newest checkpoint each "
            "witness cosigned for this host",
            "securecore_audit_witness_cosigned_timestamp_seconds": "When each witness last "
            "cosigned a checkpoint of this host",
            "securecore_audit_witness_deadline_seconds": "How long a record may wait for a "
            "witnessed checkpoint: the checkpoint interval plus the grace period (REQ-AUDIT-6)",
        },
    )
