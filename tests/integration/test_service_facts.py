"""`securecore facts`: the running service's state for the compliance checks."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.support.devserver import admin, call, dev_server


def test_facts_of_a_running_service_and_nothing_secret(tmp_path: Path) -> None:
    with dev_server(tmp_path / "dev") as server:
        call(server, "GET", "/v1/whoami")
        before = json.loads(admin(server, "facts").stdout)
        admin(server, "backup")
        # Security events for the reports: a bad token, an administrator's block.
        assert call(server, "GET", "/v1/sessions/current", token="not-a-token")[0] == 401
        admin(server, "acl", "block", "127.0.0.9", "--reason", "drill", "--by", "alice")
        after = json.loads(admin(server, "facts").stdout)
    assert before["service"] == {"ready": True}
    assert before["audit"]["verified"] is True and before["audit"]["records"] >= 1
    assert before["keys"]["signing_kid"] == "securecore-signing-v1"
    assert before["keys"]["signing_age_days"] == 0 and before["keys"]["kek_age_days"] == 0
    assert before["backup"] == {
        "kept_by": "host",
        "newest": None,
        "newest_age_hours": None,
        "unverified": [],
    }
    assert after["backup"]["newest"].endswith(".manifest.json")
    assert after["backup"]["newest_age_hours"] < 0.1
    assert before["plugins"] == {
        "active_count": 0,
        "lowest_active_score": None,
        "registered": {},
        "suspended": [],
    }
    assert before["events"]["incidents"] == [] and before["events"]["responses"] == []
    events = after["events"]
    for window in ("1d", "7d", "31d"):
        assert events["counts"][window]["acl.block success"] == 1
        assert events["counts"][window]["auth.failure failure"] >= 1
    [block] = events["responses"]
    assert block["action"] == "acl.block" and block["target"] == "127.0.0.9"
    assert set(block) == {"at", "action", "target", "outcome"}  # never the details
    text = json.dumps(after)
    dev = tmp_path / "dev"
    for path in [
        *(dev / "keys").iterdir(),
        *(dev / "secrets").iterdir(),
        *(dev / "tls").glob("*.key"),
    ]:
        data = path.read_bytes()
        lines = [line for line in data.decode(errors="ignore").splitlines() if len(line) > 20]
        for needle in (data.hex()[:32], base64.b64encode(data).decode()[:32], *lines[:1]):
            assert needle not in text, path


def test_a_stopped_service_is_not_ready(tmp_path: Path) -> None:
    with dev_server(tmp_path / "dev") as server:
        pass
    facts = json.loads(admin(server, "facts").stdout)
    assert facts["service"] == {"ready": False}
    assert facts["audit"]["verified"] is True  # the log is still there and sound
