"""The service with every store on a real PostgreSQL server (the active/standby setup).

Two workers, sessions, plugins, policy state and the audit log all in one
PostgreSQL database: the state a standby host would share.
"""

from __future__ import annotations

import json
import signal

import psycopg
import pytest

from tests.support.devserver import admin, call, dev_server
from tests.support.postgres import fresh_database


@pytest.fixture(scope="module")
def server(tmp_path_factory, postgres_dsn: str):
    # This module's own database on the session's server.
    dsn = fresh_database(postgres_dsn, "serve_postgres")

    def on_postgresql(text: str) -> str:
        text = text.replace("[audit]\n", f'[audit]\nbackend = "postgresql"\ndsn = "{dsn}"\n')
        return text + f'\n[state]\nbackend = "postgresql"\ndsn = "{dsn}"\n'

    directory = tmp_path_factory.mktemp("postgres") / "dev"
    with dev_server(directory, workers=2, edit_config=on_postgresql) as running:
        running["dsn"] = dsn
        yield running


def test_sessions_live_in_postgresql_and_every_worker_honours_them(server) -> None:
    status, pair = call(server, "POST", "/v1/sessions")
    assert status == 201
    for _ in range(6):  # new connections: both workers check the same session
        assert call(server, "GET", "/v1/sessions/current", token=pair["access_token"])[0] == 200
    status, renewed = call(
        server, "POST", "/v1/sessions/refresh", body={"refresh_token": pair["refresh_token"]}
    )
    assert status == 200
    status, reused = call(
        server, "POST", "/v1/sessions/refresh", body={"refresh_token": pair["refresh_token"]}
    )
    assert status == 401 and reused["error"]["code"] == "refresh_reuse"
    status, _ = call(server, "GET", "/v1/sessions/current", token=renewed["access_token"])
    assert status == 401  # reuse revoked the whole session, in every worker
    with psycopg.connect(server["dsn"]) as db:
        revoked = db.execute(
            "SELECT revoked_reason FROM sessions WHERE id = %s", (pair["session_id"],)
        ).fetchone()
    assert revoked == ("refresh token reuse",)


def test_blocks_and_the_emergency_mode_are_shared_through_postgresql(server) -> None:
    admin(server, "acl", "block", "127.0.0.2", "--minutes", "5", "--reason", "drill")
    refused = [call(server, "GET", "/v1/whoami", source="127.0.0.2")[0] for _ in range(6)]
    assert refused == [403] * 6
    admin(server, "acl", "unblock", "127.0.0.2")
    assert call(server, "GET", "/v1/whoami", source="127.0.0.2")[0] == 200

    admin(server, "emergency-shutdown", "--reason", "drill on postgresql")
    status, body = call(server, "POST", "/v1/sessions")
    assert status == 503 and body["error"]["code"] == "emergency"
    snapshot = json.loads(
        (server["config"].parent / "data" / "emergency" / "snapshot.json").read_text()
    )
    assert snapshot["reason"].startswith("drill on postgresql") and snapshot["latest_checkpoint"]
    admin(server, "recover", "--note", "drill over")
    assert call(server, "POST", "/v1/sessions")[0] == 201


def test_the_audit_log_in_postgresql_verifies_after_a_graceful_stop(server) -> None:
    process = server["process"]
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    verified = admin(server, "audit", "verify")
    assert "audit log OK" in verified.stdout, verified.stdout
    with psycopg.connect(server["dsn"]) as db:
        actions = {row[0] for row in db.execute("SELECT entry FROM audit_records")}
    text = b"".join(bytes(a) for a in actions)
    for action in (b"emergency.shutdown", b"emergency.recover", b"policy.acl"):
        assert action in text


def test_facts_say_the_backups_are_the_databases(server) -> None:
    # No backup of its own to miss: the compliance check passes it to the database's
    # (database.backup_recent on the repository host).
    facts = json.loads(admin(server, "facts").stdout)["backup"]
    assert facts == {
        "kept_by": "database",
        "newest": None,
        "newest_age_hours": None,
        "unverified": [],
    }
