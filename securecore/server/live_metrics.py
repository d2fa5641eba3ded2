"""What /metrics reads from the running service's state at scrape time."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from securecore.audit.log import AuditLog
from securecore.audit.writer_service import RemoteAuditLog
from securecore.monitoring.metrics import LiveState
from securecore.plugin_registry.registry import PluginRegistry
from securecore.sessions.manager import SessionManager
from securecore.tls import TLSPolicy


def _certificate_ends(policy: TLSPolicy) -> dict[tuple[str, ...], float]:
    ends: dict[tuple[str, ...], float] = {}
    for name in ("server_certificate", "client_certificate"):
        path = getattr(policy, name)
        if path is not None and Path(path).exists():
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
            end = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after
            ends[(name,)] = end.timestamp()
    return ends


def live_state(
    registry: PluginRegistry,
    sessions: SessionManager,
    audit: AuditLog | RemoteAuditLog,
    policy: TLSPolicy,
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

    return LiveState(
        {
            "securecore_plugin_trust_score": lambda: by_plugin("score"),
            "securecore_plugin_calls": lambda: by_plugin("calls"),
            "securecore_plugin_success_ratio": success_ratio,
            "securecore_plugins": plugin_states,
            "securecore_sessions_active": lambda: float(len(sessions.list_live())),
            "securecore_audit_records": lambda: float(audit.size),
            "securecore_audit_uncheckpointed_records": lambda: float(audit.uncheckpointed),
            "securecore_certificate_not_after_seconds": lambda: _certificate_ends(policy),
        },
        labels={
            "securecore_plugin_trust_score": ["plugin"],
            "securecore_plugin_calls": ["plugin"],
            "securecore_plugin_success_ratio": ["plugin"],
            "securecore_plugins": ["state"],
            "securecore_certificate_not_after_seconds": ["name"],
        },
        help_text={
            "securecore_plugin_trust_score": "Trust score of each plugin (0-100)",
            "securecore_plugin_calls": "Calls made to each plugin",
            "securecore_plugin_success_ratio": "Share of successful calls to each plugin",
            "securecore_plugins": "Plugins by state",
            "securecore_sessions_active": "Sessions neither revoked nor idle",
            "securecore_audit_records": "Records in the audit log",
            "securecore_audit_uncheckpointed_records": "Records not yet in a signed checkpoint",
            "securecore_certificate_not_after_seconds": "End of validity of the TLS certificates",
        },
    )
