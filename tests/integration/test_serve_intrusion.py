"""Intrusion detection in the served request path: five bad logins lock the account."""

from __future__ import annotations

import json

import pytest

from tests.devserver import dev_server
from tests.integration.test_audit_cli import securecore
from tests.integration.test_serve import call


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with dev_server(tmp_path_factory.mktemp("ids") / "dev") as running:
        yield running


def test_five_failed_logins_lock_the_account_and_it_is_audited(server) -> None:
    for attempt in range(5):
        status, error = call(server, "POST", "/v1/sessions/refresh",
                             body={"refresh_token": f"guessed-{attempt}"})  # fmt: skip
        assert status == 401 and error["error"]["code"] == "invalid_refresh"
    status, error = call(server, "GET", "/v1/whoami")
    assert status == 403 and error["error"]["code"] == "intrusion"
    assert (
        "account admin/admin is blocked: 5 failed logins within 5 minutes"
        in (error["error"]["message"])
    )
    server["process"].terminate()
    server["process"].wait(timeout=20)
    exported = securecore("audit", "export", "-c", str(server["config"])).stdout.splitlines()
    records = [json.loads(line)["record"] for line in exported if '"type":"record"' in line]
    actions = [record["action"] for record in records]
    assert actions.count("auth.failure") == 5
    assert "intrusion.lock_account" in actions
    lock = next(r for r in records if r["action"] == "intrusion.lock_account")
    assert lock["target"] == "admin/admin" and lock["actor"] == "securecore"
