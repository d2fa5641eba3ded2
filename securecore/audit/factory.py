"""The audit log and store the configuration names."""

from __future__ import annotations

from securecore.audit.log import AuditLog
from securecore.audit.store import AuditStore, SQLiteAuditStore
from securecore.config import Config, ConfigError
from securecore.keys.base import KeyRing
from securecore.keys.factory import read_secret_file


def open_store(config: Config) -> AuditStore:
    if config.get("audit", "backend") == "postgresql":
        dsn = config.get("audit", "dsn")
        if not dsn:
            raise ConfigError(f"{config.path}: [audit] dsn is required with backend = postgresql")
        from securecore.audit.postgres import PostgresAuditStore

        return PostgresAuditStore(dsn)
    return SQLiteAuditStore(config.get("audit", "database"))


def open_audit_log(config: Config, ring: KeyRing) -> AuditLog:
    return AuditLog(
        open_store(config),
        ring,
        config.get("audit", "witness_dir"),
        origin=config.get("audit", "origin"),
        hmac_key=read_secret_file(config, "audit", "hmac_key_file"),
        checkpoint_every=config.get("audit", "checkpoint_every"),
        checkpoint_interval=float(config.get("audit", "checkpoint_interval_seconds")),
    )
