"""The audit log and store the configuration names."""

from __future__ import annotations

import sqlite3

from securecore.audit.log import AuditLog
from securecore.audit.store import AuditStore, SQLiteAuditStore
from securecore.config import BackendError, Config, ConfigError, first_line
from securecore.keys.base import KeyRing
from securecore.keys.factory import read_secret_file


def open_store(config: Config) -> AuditStore:
    """The audit store, or BackendError naming the file and key (never the dsn: it may
    hold a password)."""
    if config.get("audit", "backend") == "postgresql":
        dsn = config.get("audit", "dsn")
        if not dsn:
            raise ConfigError(f"{config.path}: [audit] dsn is required with backend = postgresql")
        try:
            import psycopg

            from securecore.audit.postgres import PostgresAuditStore
        except ImportError as error:
            raise BackendError(
                f"{config.path}: [audit] backend = 'postgresql': psycopg is not installed"
            ) from error
        try:
            return PostgresAuditStore(dsn)
        except psycopg.Error as error:
            raise BackendError(
                f"{config.path}: [audit] dsn: cannot use the PostgreSQL audit store "
                f"({first_line(error)})"
            ) from error
    database = config.get("audit", "database")
    try:
        return SQLiteAuditStore(database)
    except (sqlite3.Error, OSError) as error:
        raise BackendError(
            f"{config.path}: [audit] database = {database}: cannot open it ({first_line(error)})"
        ) from error


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
