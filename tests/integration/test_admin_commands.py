"""Operator commands against a running service: they apply at once and are audited.

The commands are clients of /v1/admin; the actor is the administrator's
certificate (the development setup's admin certificate here).
"""

from __future__ import annotations

import json

import pytest

from tests.support.devserver import admin, call, dev_server, with_certificate


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with dev_server(tmp_path_factory.mktemp("admin") / "dev") as running:
        yield running


def test_sessions_can_be_listed_and_revoked(server) -> None:
    status, pair = call(server, "POST", "/v1/sessions")
    assert status == 201
    listed = json.loads(admin(server, "sessions", "list").stdout)
    assert [s["id"] for s in listed] == [pair["session_id"]]
    revoked = admin(
        server, "sessions", "revoke", "--principal", "admin/admin", "--reason", "laptop lost"
    )
    assert json.loads(revoked.stdout) == {"revoked": 1}
    status, error = call(server, "GET", "/v1/sessions/current", token=pair["access_token"])
    assert status == 401 and error["error"]["code"] == "revoked"


def test_blocking_an_address_applies_at_once(server) -> None:
    # The operator works from 127.0.0.1; the blocked client comes from 127.0.0.2.
    admin(server, "acl", "block", "127.0.0.2", "--minutes", "5", "--reason", "drill")
    status, error = call(server, "GET", "/v1/whoami", source="127.0.0.2")
    assert status == 403 and "127.0.0.2 is blocked: drill" in error["error"]["message"]
    assert call(server, "GET", "/v1/whoami")[0] == 200
    assert json.loads(admin(server, "acl", "list").stdout)[0]["subject"] == "127.0.0.2"
    admin(server, "acl", "unblock", "127.0.0.2")
    assert call(server, "GET", "/v1/whoami", source="127.0.0.2")[0] == 200


def test_emergency_shutdown_stops_traffic_until_recovery(server) -> None:
    _, pair = call(server, "POST", "/v1/sessions")
    done = json.loads(
        admin(server, "emergency-shutdown", "--reason", "plugin zone compromised").stdout
    )
    assert done["shutdown"] is True and done["sessions_revoked"] == 1
    status, error = call(server, "GET", "/v1/whoami")
    assert status == 503 and error["error"]["code"] == "emergency"
    assert call(server, "GET", "/healthz")[0] == 200  # monitoring still sees it
    snapshot = json.loads((server["config"].parent / "data/emergency/snapshot.json").read_text())
    assert snapshot["reason"].startswith("plugin zone compromised")
    # Administrators keep their API during the shutdown, to look and to recover.
    assert json.loads(admin(server, "status").stdout)["modes"]["shutdown"] == "on"
    refused = admin(server, "recover", check=False)
    assert refused.returncode == 2  # --note is required: what was checked
    admin(server, "recover", "--note", "plugin-01 rebuilt")
    assert call(server, "GET", "/v1/whoami")[0] == 200
    assert call(server, "GET", "/v1/sessions/current", token=pair["access_token"])[0] == 401


def test_plugin_commands_need_a_known_plugin(server) -> None:
    assert json.loads(admin(server, "plugins", "list").stdout) == []
    missing = admin(server, "plugins", "suspend", "ghost", check=False)
    assert missing.returncode == 2 and "404 not_found: no plugin named ghost" in missing.stderr


def test_the_services_own_certificate_acts_as_a_named_local_operator(server) -> None:
    admin(
        server,
        "acl",
        "block",
        "127.0.0.7",
        "--reason",
        "drill",
        "--by",
        "alice",
        "--tls-policy",
        with_certificate(server, "core"),
    )
    refused = admin(
        server,
        "acl",
        "unblock",
        "127.0.0.7",
        "--tls-policy",
        with_certificate(server, "plugin"),
        check=False,
    )
    assert refused.returncode == 2 and "403 forbidden" in refused.stderr
    exported = admin(server, "audit", "export").stdout
    assert '"actor":"operator:alice@core/localhost"' in exported
    assert '"action":"acl.block"' in exported
    # Like an administrator, the local operator keeps the admin API in an emergency.
    operator = with_certificate(server, "core")
    admin(server, "emergency-shutdown", "--reason", "operator drill", "--tls-policy", operator)
    admin(server, "recover", "--note", "operator drill over", "--tls-policy", operator)


def test_every_operator_action_is_in_the_audit_log(server) -> None:
    exported = admin(server, "audit", "export").stdout.splitlines()
    records = [json.loads(line)["record"] for line in exported if '"type":"record"' in line]
    actions = [record["action"] for record in records]
    assert {r["actor"] for r in records if r["action"] == "acl.block"} == {
        "admin/admin",
        "operator:alice@core/localhost",
    }
    for action in (
        "session.revoke",
        "acl.block",
        "acl.unblock",
        "emergency.shutdown",
        "emergency.recover",
    ):
        assert action in actions, action


def test_unblocking_names_exactly_one_subject_and_the_local_socket_is_named(server) -> None:
    neither = admin(server, "acl", "unblock", "--local", check=False)
    assert neither.returncode == 2 and "ADDRESS or --principal is required" in neither.stderr
    both = admin(
        server, "acl", "unblock", "127.0.0.9", "--principal", "dmz/x", "--local", check=False
    )
    assert both.returncode == 2 and "give ADDRESS or --principal, not both" in both.stderr
    gone = admin(
        server, "acl", "list", "--socket", str(server["config"].parent / "nope.sock"), check=False
    )
    assert gone.returncode == 2 and "local admin socket" in gone.stderr
    assert "nope.sock: FileNotFoundError" in gone.stderr
    cleared = json.loads(admin(server, "acl", "unblock", "--principal", "dmz/x", "--local").stdout)
    assert cleared == {"unblocked": "dmz/x", "removed": 0}
