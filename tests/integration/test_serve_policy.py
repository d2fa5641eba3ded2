"""The policy engine in the served request path, and its durable audit trail."""

from __future__ import annotations

import json
import signal

import pytest

from tests.support.commands import securecore, securecore_lab
from tests.support.devserver import dev_server, whoami

POLICY = """
[acl]
allow = ["127.0.0.0/8"]
deny = ["127.0.0.99/32"]

[client_limit]
rate = 0.01
burst = 3
"""


# The same policy as roles/securecore writes it from the inventory (securecore_policy).
POLICY_JSON = json.dumps(
    {
        "acl": {"allow": ["127.0.0.0/8"], "deny": ["127.0.0.99/32"]},
        "client_limit": {"rate": 0.01, "burst": 3},
    },
    indent=4,
)


@pytest.fixture(scope="module", params=[POLICY, POLICY_JSON], ids=["toml", "json"])
def server(tmp_path_factory, request):
    with dev_server(tmp_path_factory.mktemp("policy") / "dev", policy=request.param) as running:
        yield running


def test_the_rate_limit_answers_429_with_retry_after_and_everything_is_audited(server) -> None:
    statuses = [whoami(server).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    limited = whoami(server)
    assert limited.status == 429 and limited.body["error"]["code"] == "rate_limit"
    assert int(limited.getheader("Retry-After")) >= 1
    # Health stays reachable for monitoring even when the client is limited.
    assert whoami(server, "/healthz").status == 200
    process = server["process"]
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)
    verified = securecore("audit", "verify", "-c", str(server["config"]))
    assert "audit log OK: 4 records" in verified.stdout, verified.stdout
    exported = securecore("audit", "export", "-c", str(server["config"])).stdout.splitlines()
    records = [json.loads(line)["record"] for line in exported if '"type":"record"' in line]
    assert [r["outcome"] for r in records] == ["allowed"] * 3 + ["denied"]
    assert records[-1]["action"] == "policy.rate_limit"
    assert records[0]["details"]["policy_version"] == records[-1]["details"]["policy_version"]
    assert records[0]["actor"] == "admin/admin"


@pytest.mark.parametrize(
    ("name", "text", "named"),
    [
        ("policy.toml", '[acl]\nallow = ["10.0.0.0/33"]\n', "acl.allow"),
        ("policy.json", '{"acl": {"allow": ["10.0.0.0/33"]}}', "acl.allow"),
        (
            "policy.json",
            '["client_limit"]',
            "a mapping (acl, client_limit, plugin_limit) is wanted",
        ),
        ("policy.json", '{"client_limit": {"rate": 5,', "Expecting"),
    ],
)
def test_a_bad_policy_file_stops_the_start_naming_the_file(
    tmp_path, name: str, text: str, named: str
) -> None:
    directory = tmp_path / "dev"
    securecore_lab("init", str(directory), "--software-keys")
    (directory / name).write_text(text)
    config = directory / "config.toml"
    config.write_text(config.read_text() + f'\n[policy]\nfile = "{name}"\n')
    proc = securecore("serve", "-c", str(config), check=False)
    assert proc.returncode == 2
    assert f"{name} ([policy] file of" in proc.stderr and named in proc.stderr, proc.stderr
