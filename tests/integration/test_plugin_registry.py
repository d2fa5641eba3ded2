"""Plugin registration (five steps) and trust, with the real secure-channel test.

The reference plugin (the SDK's ticket store) runs as its own process; step 3
hands it a channel key over mutual TLS 1.3 with the core's client
certificate and makes a sealed round trip, as on the lab.
"""

from __future__ import annotations

import dataclasses
import subprocess
import uuid
from pathlib import Path

import pytest

from securecore import config as configuration
from securecore.keys.factory import open_key_ring
from securecore.plugin_registry.access import EndpointPolicy
from securecore.plugin_registry.channel_client import PluginCaller, registration_probe
from securecore.plugin_registry.registry import PluginRegistry, RegistrationRequest
from securecore.server.identity import Principal
from securecore.storage.state_db import StateDatabase
from securecore.tls import TLSPolicy
from tests.support.commands import securecore_lab
from tests.support.devserver import free_port, ticket_store_command, wait_for_port
from tests.support.postgres import fresh_database


def principal(kind: str, name: str) -> Principal:
    return Principal(kind, name, f"spiffe://securecore/{kind}/{name}", f"CN={name}", "1", "ab" * 32)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    """A development setup's certificates, and the ticket store serving on a free port as
    "example", the plugin its certificate names."""
    base = tmp_path_factory.mktemp("plugin") / "dev"
    securecore_lab("init", str(base), "--software-keys")
    port = free_port()
    process = subprocess.Popen(
        ticket_store_command(base / "tls", base / "tickets", port),
        stdout=subprocess.DEVNULL,
        stderr=(base / "plugin.log").open("w"),
    )
    try:
        wait_for_port(port)
        yield {"port": port, "tls": base / "tls", "config": base / "config.toml"}
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database(request, tmp_path: Path):
    """The registry's state database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return StateDatabase.sqlite(tmp_path / "plugins.db")
    dsn = request.getfixturevalue("postgres_dsn")
    return StateDatabase.postgresql(fresh_database(dsn, f"t{uuid.uuid4().hex}"), "plugins")


@pytest.fixture
def registry(endpoint, database):
    tls = endpoint["tls"]
    policy = dataclasses.replace(
        TLSPolicy.from_file(tls / "policy.json"),
        client_certificate=tls / "core.pem",
        client_key=tls / "core.key",
    )  # the core's own certificate: plugins answer no one else
    ring = open_key_ring(configuration.load(endpoint["config"]))
    records: list[tuple] = []
    loopback = EndpointPolicy.from_config(["127.0.0.1/32"])
    registry = PluginRegistry(
        database,
        vendors={"acme": 80, "shady": 10},
        minimum_security_level=3,
        probe=registration_probe(PluginCaller(policy, ring, timeout=3, endpoints=loopback)),
        audit=lambda *record: records.append(record),
        endpoints=loopback,
    )
    registry.records = records
    yield registry
    registry.close()


def request(server, **changes) -> RegistrationRequest:
    values = {
        "name": "example",
        "vendor": "acme",
        "security_level": 4,
        "endpoint": f"https://localhost:{server['port']}",
    }
    return RegistrationRequest(**{**values, **changes})


def test_a_plugin_registers_in_five_steps(registry, endpoint) -> None:
    done = registry.register(request(endpoint), principal("plugin", "example"))
    assert done.state == "active" and done.score == 74
    assert [s["step"] for s in done.steps] == [
        "request",
        "security",
        "communication",
        "trust",
        "completion",
    ]
    assert all(s["outcome"] == "passed" for s in done.steps)
    assert "TLSv1.3" in done.steps[2]["detail"]
    assert [a["code"] for a in done.alerts] == ["plugin_new"]
    actions = [record[1] for record in registry.records]
    assert actions[-1] == "plugin.register.completion" and len(actions) == 5
    stored = registry.get("example")
    assert stored["trust_history"][0]["reason"] == "registered"


@pytest.mark.parametrize(
    ("changes", "who", "step", "message"),
    [
        ({"name": "Bad Name"}, ("plugin", "Bad Name"), "request", "name 'Bad Name'"),
        ({"endpoint": "http://localhost:1"}, None, "request", "https://HOST:PORT"),
        ({"security_level": 2}, None, "security", "security level 2 is below 3"),
        ({}, ("admin", "alice"), "security", "names admin/alice, not plugin/example"),
        ({"vendor": "unknown-co"}, None, "security", "vendor 'unknown-co' is not allowed"),
    ],
)
def test_a_failing_step_leaves_the_plugin_pending(
    registry, endpoint, changes, who, step, message
) -> None:
    wanted = request(endpoint, **changes)
    done = registry.register(wanted, principal(*(who or ("plugin", wanted.name))))
    assert done.state == "pending"
    assert done.steps[-1]["step"] == step and message in done.steps[-1]["detail"]
    assert registry.records[-1][3] == "failure"


def test_an_unreachable_endpoint_fails_the_communication_test(registry) -> None:
    unreachable = RegistrationRequest("example", "acme", f"https://localhost:{free_port()}", 4)
    done = registry.register(unreachable, principal("plugin", "example"))
    assert done.state == "pending" and done.steps[-1]["step"] == "communication"
    assert registry.get("example")["reason"].startswith("communication: ")


def test_failures_lower_trust_until_the_plugin_is_suspended(registry, endpoint) -> None:
    registry.register(request(endpoint), principal("plugin", "example"))
    for _ in range(18):
        registry.record_call("example", "success", 12.5)
    assessment = None
    for _ in range(4):
        assessment = registry.record_call("example", "failure", 5000)
    assert any(a.code == "success_rate_low" for a in assessment.alerts)  # 18/22 = 82%
    assert registry.get("example")["state"] == "active"
    for _ in range(3):
        assessment = registry.record_call("example", "violation", detail="bad signature")
    plugin = registry.get("example")
    assert plugin["state"] == "suspended" and plugin["score"] <= 30
    assert "trust score" in plugin["reason"]
    scores = [entry["score"] for entry in plugin["trust_history"]]
    assert scores[0] == 74 and scores[-1] == plugin["score"] and len(scores) > 5
    assert registry.records[-1][1] == "plugin.suspend"


def test_revocation_is_final(registry, endpoint) -> None:
    registry.register(request(endpoint), principal("plugin", "example"))
    registry.set_state("example", "revoked", "vendor contract ended", "admin/alice")
    with pytest.raises(ValueError, match="revocation is final"):
        registry.set_state("example", "active", "oops", "admin/alice")
    again = registry.register(request(endpoint), principal("plugin", "example"))
    assert again.state == "pending" and "is revoked" in again.steps[-1]["detail"]
