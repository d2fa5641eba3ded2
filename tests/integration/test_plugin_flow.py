"""Registration of a real plugin (the SDK's ticket store) and the secure call flow.

The core (`securecore serve`) and the plugins run as separate processes and
talk mutual TLS 1.3 on loopback; calls are sealed (AES-256-GCM + ECDSA).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import sys
from pathlib import Path

import pytest
from cryptography import x509

from securecore.config import load as load_config
from securecore.keys.factory import open_key_ring
from securecore.plugin_registry.registry import PluginRegistry
from securecore.plugin_sdk import PluginError, register_with_core
from securecore.storage.state_db import open_state
from tests.support.devserver import (
    admin,
    call,
    context,
    dev_server,
    file_serial,
    free_port,
    plugin_call,
    plugin_log,
    plugin_process,
    reload_and_wait,
    roll_over,
    scrape,
    ticket_store,
)


def register(server, port: int) -> dict:
    return register_with_core(
        f"https://127.0.0.1:{server['port']}",
        tls_policy=server["tls"] / "plugin-policy.json",
        name="example",
        vendor="example",
        endpoint=f"https://localhost:{port}",
        security_level=4,
    )


def registered_plugin(server) -> dict:
    return json.loads(admin(server, "plugins", "list").stdout)[0]


@pytest.fixture
def server(tmp_path: Path):
    with dev_server(tmp_path / "dev") as running:
        status, pair = call(running, "POST", "/v1/sessions")
        assert status == 201
        running["token"] = pair["access_token"]
        yield running


def test_the_ticket_store_registers_and_answers_through_the_secure_flow(server) -> None:
    port = free_port()
    with ticket_store(server, port):
        answer = register(server, port)
        assert answer["state"] == "active" and answer["score"] > 30
        assert [s["step"] for s in answer["steps"]] == [
            "request",
            "security",
            "communication",
            "trust",
            "completion",
        ]
        assert "sealed round trip verified" in answer["steps"][2]["detail"]
        assert answer["session"]["access_token"]  # step 5: the plugin's own session

        wanted = {"title": "disk full on core-02", "priority": "high"}
        status, created = plugin_call(server, server["token"], "tickets.create", wanted)
        assert status == 200, created
        ticket = created["result"]
        assert ticket["status"] == "open" and ticket["created_by"] == "admin/admin"
        status, updated = plugin_call(
            server,
            server["token"],
            "tickets.update",
            {"id": ticket["id"], "status": "resolved", "comment": "logs rotated"},
        )
        assert status == 200 and updated["result"]["status"] == "resolved"
        status, missing = plugin_call(server, server["token"], "tickets.get", {"id": 999})
        assert status == 422 and "no ticket 999" in missing["error"]["message"]

    plugin = registered_plugin(server)
    assert plugin["calls"] == 3 and plugin["successes"] == 3  # a refusal is still an answer
    # The channel key is on the plugin (0600) and never in the core's database.
    channel_file = server["config"].parent / "tickets" / "channel.json"
    assert channel_file.stat().st_mode & 0o777 == 0o600
    key = next(iter(json.loads(channel_file.read_text())["keys"].values()))
    assert key.encode() not in (server["config"].parent / "data" / "plugins.db").read_bytes()
    exported = admin(server, "audit", "export").stdout
    assert exported.count('"action":"plugin.call"') == 3
    assert '"action":"plugin.register.completion"' in exported
    # Each step of the flow is counted and timed in /metrics.
    steps = flow_steps(server)
    for step in ("session", "seal", "mtls_call", "open", "record"):
        assert steps[(step, "success")] == 3, (step, steps)
    text = scrape(server)[1]
    assert 'securecore_plugin_flow_step_seconds_count{step="mtls_call"} 3.0' in text


def flow_steps(server) -> dict[tuple[str, str], float]:
    """securecore_plugin_flow_steps_total from /metrics: (step, outcome) -> count."""
    found = {}
    for line in scrape(server)[1].splitlines():
        match = re.match(
            r'securecore_plugin_flow_steps_total\{outcome="([^"]+)",step="([^"]+)"\} (\S+)', line
        )
        if match:
            found[(match[2], match[1])] = float(match[3])
    return found


def test_without_a_session_or_as_anyone_but_the_core_nothing_reaches_the_plugin(server) -> None:
    port = free_port()
    with ticket_store(server, port):
        register(server, port)
        status, refused = call(
            server, "POST", "/v1/plugins/example/call", body={"op": "tickets.list"}
        )
        assert status == 401 and refused["error"]["code"] == "unauthenticated"
        # The plugin itself answers only the core's certificate.
        direct = http.client.HTTPSConnection(
            "localhost", port, context=context(server["tls"]), timeout=10
        )
        direct.request("POST", "/securecore/v1/call", body="{}")
        response = direct.getresponse()
        assert response.status == 403
        assert json.loads(response.read())["error"]["code"] == "not_the_core"
        direct.close()


@pytest.mark.parametrize(
    ("mode", "code"),
    [("bad_signature", "bad_signature"), ("replay", "unexpected_reply"), ("garbage", "malformed")],
)
def test_a_plugin_answering_badly_loses_trust_until_it_is_suspended(server, mode, code) -> None:
    port = free_port()
    tls, base = server["tls"], server["config"].parent
    command = [
        sys.executable,
        "-m",
        "tests.support.misbehaving_plugin",
        mode,
        str(tls / "plugin-policy.json"),
        str(base / f"state-{mode}"),
        str(port),
    ]
    with plugin_process(server, command, port):
        assert register(server, port)["state"] == "active"  # its first answer was good
        before = registered_plugin(server)["score"]
        codes = []
        for _ in range(40):
            status, answer = plugin_call(server, server["token"], "echo", {"n": 1})
            if status == 403:  # the trust stage stops calls to a suspended plugin
                assert answer["error"]["code"] == "trust"
                break
            assert status == 502
            codes.append(answer["error"]["code"])
        plugin = registered_plugin(server)
        # Registering again does not undo the suspension.
        with contextlib.suppress(PluginError):
            assert register(server, port)["state"] != "active"
        assert registered_plugin(server)["state"] == "suspended"
    assert set(codes) == {code}
    assert flow_steps(server)[("open", code)] == len(codes)  # where the flow stopped
    assert plugin["state"] == "suspended" and plugin["score"] <= 30 < before
    assert "trust score at or below 30" in plugin["reason"]


def test_a_stopped_plugin_drops_its_success_rate_and_trust(server) -> None:
    port = free_port()
    with ticket_store(server, port):
        register(server, port)
        assert plugin_call(server, server["token"], "tickets.list", {})[0] == 200
        healthy = registered_plugin(server)
    status, answer = plugin_call(server, server["token"], "tickets.list", {})
    assert status == 502 and answer["error"]["code"] == "unreachable"
    assert flow_steps(server)[("mtls_call", "unreachable")] == 1
    stopped = registered_plugin(server)
    assert (stopped["calls"], stopped["successes"]) == (2, 1)
    assert stopped["score"] < healthy["score"]


def stored_channel(server):
    """(state, endpoint, kid, Channel) as the core's registry keeps them."""
    config = load_config(server["config"])
    registry = PluginRegistry(
        open_state(config, "plugins"), vendors={}, minimum_security_level=0, probe=lambda *_: {}
    )
    return registry.channel("example")


def test_keys_and_certificates_rotate_under_a_registered_plugin_without_a_failed_call(
    server,
) -> None:
    """The core's signing key and every TLS certificate rotate while calls go on;
    registering again moves the channel to the new keys."""
    port = free_port()
    tls = server["tls"]
    with ticket_store(server, port) as plugin:
        register(server, port)
        assert plugin_call(server, server["token"], "tickets.create", {"title": "a"})[0] == 200
        ring = open_key_ring(load_config(server["config"]))
        first_core_key = ring.current("securecore-signing")
        ring.backend.create_version("securecore-signing", "ec_p256")
        roll_over(tls, "server", "core", "plugin")
        reload_and_wait(server, "TLS reloaded")
        reload_and_wait({"process": plugin, "log": plugin_log(server, port)}, "TLS reloaded")
        channel_file = server["config"].parent / "tickets" / "channel.json"

        # Old channel: the core signs with the key the plugin was given, the plugin
        # answers with the key the core pinned - both kept through the rotation.
        status, answer = plugin_call(server, server["token"], "tickets.create", {"title": "b"})
        assert status == 200, answer
        assert registered_plugin(server)["state"] == "active"

        register(server, port)  # the deploy-time step rotate-keys.yml repeats
        state, _, _, channel = stored_channel(server)
        assert state == "active" and channel.core_kid == ring.current("securecore-signing")
        assert channel.core_kid != first_core_key
        pinned = x509.load_pem_x509_certificate(channel.certificate.encode())
        assert pinned.serial_number == file_serial(tls / "plugin.pem")
        signers = json.loads(channel_file.read_text())["signers"]
        assert len(set(signers.values())) == 2  # answers on the new channel use the new key
        status, answer = plugin_call(server, server["token"], "tickets.list", {})
        assert status == 200 and len(answer["result"]) == 2
    plugin_row = registered_plugin(server)
    assert plugin_row["calls"] == plugin_row["successes"] == 3
