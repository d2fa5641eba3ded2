"""What /metrics reads from the running service's state at scrape time."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from cryptography import x509

from securecore.audit.log import AuditLog
from securecore.monitoring.metrics import LiveState
from securecore.tls import TLSPolicy


def _plugin_rows(database: Path) -> list[tuple]:
    if not database.exists():
        return []
    with sqlite3.connect(database) as db:
        try:
            return db.execute("SELECT name, state, score, calls, successes FROM plugins").fetchall()
        except sqlite3.OperationalError:
            return []  # no plugin registered yet: no table


def _certificate_ends(policy: TLSPolicy) -> dict[tuple[str, ...], float]:
    ends = {}
    for name in ("server_certificate", "client_certificate"):
        path = getattr(policy, name)
        if path is not None and Path(path).exists():
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
            end = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after
            ends[(name,)] = end.timestamp()
    return ends


def live_state(data_dir: Path, audit: AuditLog, policy: TLSPolicy) -> LiveState:
    plugins_db, sessions_db = data_dir / "plugins.db", data_dir / "sessions.db"

    def by_plugin(column: int) -> dict[tuple[str, ...], float]:
        return {(row[0],): float(row[column]) for row in _plugin_rows(plugins_db)}

    def success_ratio() -> dict[tuple[str, ...], float]:
        return {(r[0],): (r[4] / r[3] if r[3] else 1.0) for r in _plugin_rows(plugins_db)}

    def plugin_states() -> dict[tuple[str, ...], float]:
        counts = dict.fromkeys(("pending", "active", "suspended", "revoked"), 0.0)
        for row in _plugin_rows(plugins_db):
            counts[row[1]] = counts.get(row[1], 0.0) + 1
        return {(state,): number for state, number in counts.items()}

    def active_sessions() -> float:
        if not sessions_db.exists():
            return 0.0
        with sqlite3.connect(sessions_db) as db:
            return float(
                db.execute(
                    "SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND last_seen > ?",
                    (time.time() - 900,),
                ).fetchone()[0]
            )

    return LiveState(
        {
            "securecore_plugin_trust_score": lambda: by_plugin(2),
            "securecore_plugin_calls": lambda: by_plugin(3),
            "securecore_plugin_success_ratio": success_ratio,
            "securecore_plugins": plugin_states,
            "securecore_sessions_active": active_sessions,
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
