"""The audit log on a real PostgreSQL server that the test starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from securecore.audit.log import AuditLog, verify_log
from securecore.audit.postgres import PostgresAuditStore
from tests.support.auditlog import append_from_threads
from tests.support.commands import WRITE_RECORDS, securecore, securecore_lab
from tests.support.keyrings import software_ring
from tests.support.postgres import fresh_database


@pytest.fixture(scope="module")
def dsn(postgres_dsn: str) -> str:
    return fresh_database(postgres_dsn, "audit_postgres")


def test_the_log_on_postgresql_verifies_and_catches_tampering(dsn: str, tmp_path: Path) -> None:
    ring = software_ring(tmp_path)
    log = AuditLog(
        PostgresAuditStore(dsn),
        ring,
        tmp_path / "witness",
        origin="securecore.test/audit",
        hmac_key=b"k" * 32,
        checkpoint_every=50,
    )
    seqs = append_from_threads(log)
    log.close()
    assert sorted(seqs) == list(range(1, 201))

    public = {"securecore-signing-v1": ring.backend.public_key("securecore-signing-v1")}
    store = PostgresAuditStore(dsn)
    result = verify_log(store, tmp_path / "witness", public)
    assert result.ok and result.size == 200 and result.checkpoints >= 4, result
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(
            "UPDATE audit_records SET entry = replace(convert_from(entry, 'UTF8'), "
            '\'"outcome":"success"\', \'"outcome":"failure"\')::bytea WHERE seq = 99'
        )
    result = verify_log(store, tmp_path / "witness", public)
    store.close()
    assert not result.ok and result.first_bad_seq == 99, result

    # Reopening the log on the same database continues the sequence.
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(
            "UPDATE audit_records SET entry = replace(convert_from(entry, 'UTF8'), "
            '\'"outcome":"failure"\', \'"outcome":"success"\')::bytea WHERE seq = 99'
        )
    reopened = AuditLog(
        PostgresAuditStore(dsn),
        ring,
        tmp_path / "witness",
        origin="securecore.test/audit",
        hmac_key=b"k" * 32,
    )
    assert reopened.append("alice", "logout", "core", "success") == 201
    reopened.close()


def test_the_commands_use_postgresql_when_configured(dsn: str, tmp_path: Path) -> None:
    directory = tmp_path / "dev"
    securecore_lab("init", str(directory), "--software-keys")
    config = directory / "config.toml"
    text = config.read_text().replace(
        "[audit]\n", f'[audit]\nbackend = "postgresql"\ndsn = "{dsn} options=-csearch_path=cli"\n'
    )
    config.write_text(text)
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("CREATE SCHEMA IF NOT EXISTS cli")
    written = subprocess.run(
        [sys.executable, "-c", WRITE_RECORDS, str(config), "30"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert written.returncode == 0, written.stderr
    verified = securecore("audit", "verify", "-c", str(config))
    assert verified.stdout.startswith("audit log OK: 30 records"), verified.stdout
    refused = securecore("backup", "-c", str(config), check=False)
    assert refused.returncode == 2 and "back up PostgreSQL with its own tools" in refused.stderr
