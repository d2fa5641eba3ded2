"""Plugins cannot touch each other, and calls to them are authorised per plugin and operation.

Attacks, the way a plugin or a principal with a session would make them, against
a served core and real plugin processes over mutual TLS 1.3 on loopback:
- plugin "other" registers naming the endpoint of plugin "example": refused after
  the handshake and before a byte is sent, so example keeps its channel key;
- an endpoint outside the plugin networks or ports: refused with no connection;
- a core the plugin was not configured with hands it a channel key: refused;
- a principal the access policy does not name calls a plugin operation: 403, audited;
- a suspended or revoked plugin principal asks for a session or a refresh: refused.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import secrets
import socket
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from securecore.plugin_sdk import PluginError, register_with_core
from securecore_lab.devsetup import development_ca, issue_development_leaf
from tests.support.commands import securecore, securecore_lab
from tests.support.devserver import (
    admin,
    call,
    context,
    dev_server,
    free_port,
    plugin_call,
    plugin_process,
    ticket_store,
)

LOCALHOST = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
ACCESS = """
[[plugins.access]]
principals = ["admin/*"]
plugins = ["example"]
operations = ["tickets.create", "tickets.list"]
"""


def add_plugin_identity(tls: Path, name: str) -> None:
    """TLS/NAME.pem for plugin NAME, from a second CA that joins the bundle, and its policy."""
    ca, ca_key = development_ca("SecureCore Development CA (plugins)")
    with (tls / "ca.pem").open("ab") as bundle:
        bundle.write(ca.public_bytes(serialization.Encoding.PEM))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    uri = x509.UniformResourceIdentifier(f"spiffe://securecore/plugin/{name}")
    spec = (name, usages, [*LOCALHOST, uri])
    issue_development_leaf(tls, name, ca, ca_key, spec)
    policy = json.loads((tls / "plugin-policy.json").read_text())
    for role in ("server", "client"):
        policy[f"{role}_certificate"] = str(tls / f"{name}.pem")
        policy[f"{role}_key"] = str(tls / f"{name}.key")
    (tls / f"{name}-policy.json").write_text(json.dumps(policy))


@pytest.fixture
def server(tmp_path: Path):
    """A core whose plugins may serve on loopback at two ports, with a second plugin
    identity ("other"), and an access policy naming the administrator for two operations."""
    directory = tmp_path / "dev"
    ports = [free_port(), free_port()]

    def edit(text: str) -> str:
        add_plugin_identity(directory / "tls", "other")
        text = text.replace("allowed_networks = ", f"allowed_ports = {ports}\nallowed_networks = ")
        head, _, rest = text.partition("[[plugins.access]]")
        return head + ACCESS.lstrip() + "\n[backup]" + rest.partition("[backup]")[2]

    with dev_server(directory, edit_config=edit) as running:
        status, pair = call(running, "POST", "/v1/sessions")
        assert status == 201
        running["token"], running["plugin_ports"] = pair["access_token"], ports
        yield running


def register_as(server, name: str, endpoint: str) -> dict:
    policy = "plugin-policy.json" if name == "example" else f"{name}-policy.json"
    return register_with_core(
        f"https://127.0.0.1:{server['port']}",
        tls_policy=server["tls"] / policy,
        name=name,
        vendor="example",
        endpoint=endpoint,
        security_level=4,
    )


def audit_records(server, action: str) -> list[dict]:
    lines = admin(server, "audit", "export").stdout.splitlines()
    return [json.loads(line)["record"] for line in lines if f'"action":"{action}"' in line]


def test_a_plugin_naming_another_plugins_endpoint_gets_no_key_to_it(server) -> None:
    port = server["plugin_ports"][0]
    channel_file = server["config"].parent / "tickets" / "channel.json"
    with ticket_store(server, port):
        register_as(server, "example", f"https://localhost:{port}")
        before = channel_file.read_bytes()
        assert plugin_call(server, server["token"], "tickets.create", {"title": "a"})[0] == 200
        for endpoint in (f"https://localhost:{port}", f"https://127.0.0.1:{port}"):
            with pytest.raises(PluginError) as refused:
                register_as(server, "other", endpoint)
            # Nothing reached example: its channel key is the one it had...
            assert channel_file.read_bytes() == before
            assert "wrong_identity" in str(refused.value)
            assert "plugin/example, not spiffe://securecore/plugin/other" in str(refused.value)
        # ... and it answers as before.
        for _ in range(3):
            status, answer = plugin_call(server, server["token"], "tickets.list", {})
            assert status == 200 and len(answer["result"]) == 1
    failed = [
        r for r in audit_records(server, "plugin.register.communication") if r["target"] == "other"
    ]
    assert len(failed) == 2 and all(r["outcome"] == "failure" for r in failed)


@contextlib.contextmanager
def listener(address: str):
    """A TCP socket on ADDRESS that counts the connections it is offered."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        sock.listen(8)
        sock.settimeout(0.5)
        yield sock


def accepted(sock: socket.socket) -> int:
    count = 0
    with contextlib.suppress(TimeoutError):
        while count < 10:
            connection, _ = sock.accept()
            connection.close()
            count += 1
    return count


def test_an_endpoint_outside_the_plugin_networks_and_ports_gets_no_connection(server) -> None:
    with listener("127.0.0.2") as elsewhere, listener("127.0.0.1") as another_service:
        targets = {
            f"https://127.0.0.2:{server['plugin_ports'][0]}": "127.0.0.2 is not in the plugin",
            f"https://127.0.0.2:{elsewhere.getsockname()[1]}": "is not a plugin port",
            f"https://localhost:{another_service.getsockname()[1]}": "is not a plugin port",
            f"https://localhost:{server['port']}": "is not a plugin port",  # the core itself
        }
        for endpoint, reason in targets.items():
            with pytest.raises(PluginError, match=r"registration_failed|answered 422") as refused:
                register_as(server, "example", endpoint)
            assert "endpoint not allowed" in str(refused.value) and reason in str(refused.value)
        assert accepted(elsewhere) == 0 and accepted(another_service) == 0
    records = audit_records(server, "plugin.register.request")
    refusals = [r for r in records if r["outcome"] == "failure"]
    assert len(refusals) == len(targets)
    assert all("endpoint not allowed" in r["details"]["detail"] for r in refusals)


def test_a_plugin_takes_channel_keys_only_from_the_cores_it_was_configured_with(server) -> None:
    port = server["plugin_ports"][1]
    tls, base = server["tls"], server["config"].parent
    command = [
        sys.executable,
        "-m",
        "tests.support.misbehaving_plugin",
        "good",
        str(tls / "plugin-policy.json"),
        str(base / "state"),
        str(port),
        "example",
        "core/core-01,core/core-02",
    ]
    with plugin_process(server, command, port):
        # The core of this site is core/localhost, which this plugin does not serve.
        with pytest.raises(PluginError, match="core_not_allowed"):
            register_as(server, "example", f"https://localhost:{port}")
        direct = http.client.HTTPSConnection(
            "localhost", port, context=context(tls, client="core"), timeout=10
        )
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        forged = {"kid": "forged", "key": key, "core_keys": {"k": "x"}}
        direct.request(
            "PUT",
            "/securecore/v1/channel",
            body=json.dumps(forged),
            headers={"Content-Type": "application/json"},
        )
        response = direct.getresponse()
        assert response.status == 403
        assert json.loads(response.read())["error"]["code"] == "core_not_allowed"
        direct.close()
    assert not (base / "state" / "channel.json").exists()


def test_only_what_the_access_policy_names_is_allowed(server) -> None:
    port = server["plugin_ports"][0]
    with ticket_store(server, port):
        registered = register_as(server, "example", f"https://localhost:{port}")
        status, created = plugin_call(server, server["token"], "tickets.create", {"title": "x"})
        assert status == 200, created
        # Allowed: the administrator, these two operations of this plugin. Nothing else.
        plugin_token = registered["session"]["access_token"]
        status, other_session = call(server, "POST", "/v1/sessions", client="other")
        assert status == 201  # a never-registered plugin principal
        attempts = [
            ("admin", server["token"], "example", "tickets.update", {"id": 1, "status": "closed"}),
            ("admin", server["token"], "nonexistent", "tickets.list", {}),
            ("plugin", plugin_token, "example", "tickets.list", {}),
            ("other", other_session["access_token"], "example", "tickets.get", {"id": 1}),
            (
                "other",
                other_session["access_token"],
                "example",
                "tickets.update",
                {"id": 1, "status": "closed"},
            ),
        ]
        for client, token, plugin, op, args in attempts:
            status, refused = call(
                server,
                "POST",
                f"/v1/plugins/{plugin}/call",
                token=token,
                body={"op": op, "args": args},
                client=client,
            )
            assert status == 403, (client, plugin, op, refused)
            assert refused["error"]["code"] == "forbidden"
        status, listed = plugin_call(server, server["token"], "tickets.list", {})
        assert status == 200 and listed["result"][0]["status"] == "open"  # nobody closed it
    denials = audit_records(server, "plugin.authorize")
    assert [(r["actor"], r["target"], r["details"]["op"], r["outcome"]) for r in denials] == [
        ("admin/admin", "example", "tickets.update", "denied"),
        ("admin/admin", "nonexistent", "tickets.list", "denied"),
        ("plugin/example", "example", "tickets.list", "denied"),
        ("plugin/other", "example", "tickets.get", "denied"),
        ("plugin/other", "example", "tickets.update", "denied"),
    ]
    calls = audit_records(server, "plugin.call")
    assert len(calls) == 2 and {r["actor"] for r in calls} == {"admin/admin"}


@pytest.mark.parametrize("verb", ["suspend", "revoke"])
def test_a_suspended_or_revoked_plugin_principal_gets_no_session(server, verb) -> None:
    port = server["plugin_ports"][0]
    with ticket_store(server, port):
        registered = register_as(server, "example", f"https://localhost:{port}")["session"]
        status, held = call(server, "POST", "/v1/sessions", client="plugin")
        assert status == 201  # while it is active
        admin(server, "plugins", verb, "example", "--reason", "vendor incident")
    status, refused = call(server, "POST", "/v1/sessions", client="plugin")
    assert status == 403 and refused["error"]["code"] == "principal_blocked"
    assert "plugin/example is " in refused["error"]["message"]
    for pair in (registered, held):
        status, refused = call(
            server,
            "POST",
            "/v1/sessions/refresh",
            client="plugin",
            body={"refresh_token": pair["refresh_token"]},
        )
        assert status == 403 and refused["error"]["code"] == "principal_blocked"
        status, ended = call(
            server, "GET", "/v1/sessions/current", client="plugin", token=pair["access_token"]
        )
        assert status == 401 and ended["error"]["code"] == "revoked"
    # Other principals are not affected.
    assert call(server, "POST", "/v1/sessions")[0] == 201
    assert call(server, "POST", "/v1/sessions", client="other")[0] == 201


@pytest.mark.parametrize(
    ("addition", "named"),
    [
        (
            '[[plugins.access]]\nprincipals = ["admin/*"]\nplugins = ["*"]\n',
            "[[plugins.access]][1].operations: a non-empty list",
        ),
        ("", "[plugins] allowed_networks: '10.0.0.0/33'"),
    ],
)
def test_a_malformed_access_rule_or_network_stops_the_start(tmp_path: Path, addition, named):
    securecore_lab("init", str(tmp_path / "dev"), "--software-keys")
    config = tmp_path / "dev" / "config.toml"
    text = config.read_text()
    if not addition:
        text = text.replace(
            'allowed_networks = ["127.0.0.1/32"', 'allowed_networks = ["10.0.0.0/33"'
        )
    config.write_text(text.replace("[backup]", addition + "\n[backup]"))
    started = securecore("serve", "-c", str(config), check=False)
    assert started.returncode != 0 and named in started.stderr, started.stderr
