"""A plugin registered once, called through every host of a cluster (REQ-HA-13).

Two `securecore serve` processes share one PostgreSQL database (cluster mode) and
one site CA; the reference plugin registers with the first. Each host calls it
over a channel of its own, whose key only that host's key-encryption key unwraps,
and the plugin checks every message against the keys of the host that set up the
channel the message names.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
from pathlib import Path

import psycopg
import pytest

from securecore.crypto.channel import seal_message
from securecore.crypto.envelope import Envelope, EnvelopeError, open_envelope
from securecore.keys.base import KeyRing
from securecore.keys.software import SoftwareKeys
from securecore.plugin_registry.channel_client import CORE_ADDRESS
from tests.integration.test_audit_cluster import cluster_config
from tests.integration.test_plugin_flow import register
from tests.support.devserver import call, context, dev_server, free_port, plugin_call, ticket_store
from tests.support.postgres import fresh_database


@pytest.fixture
def dsn(postgres_dsn: str, request: pytest.FixtureRequest) -> str:
    return fresh_database(postgres_dsn, f"pcluster_{request.node.name[:40]}")


def ring(base: Path, name: str) -> KeyRing:
    """Host NAME's keys (its development key directory): its own signing key and KEK."""
    return KeyRing(
        SoftwareKeys(base / name / "keys"), f"securecore-signing-{name}", "securecore-kek"
    )


def channels(dsn: str) -> dict[str, tuple[str, str, str]]:
    with psycopg.connect(dsn) as db:
        rows = db.execute(
            "SELECT holder, channel_kid, channel_key, channel_core_kid FROM plugin_channels"
            " WHERE plugin = 'example'"
        ).fetchall()
    return {holder: (kid, wrapped, core_kid) for holder, kid, wrapped, core_kid in rows}


def test_a_plugin_registered_on_one_host_answers_through_the_other_on_its_own_channel(
    dsn: str, tmp_path: Path
) -> None:
    pins = tmp_path / "origin-keys.json"

    def host_b(text: str) -> str:
        # One CA for both hosts, as one site has: the plugin knows one core identity.
        shutil.copytree(tmp_path / "a" / "tls", tmp_path / "b" / "tls", dirs_exist_ok=True)
        return cluster_config(dsn, "b", pins)(text)

    port = free_port()
    with (
        dev_server(tmp_path / "a", edit_config=cluster_config(dsn, "a", pins)) as a,
        dev_server(tmp_path / "b", edit_config=host_b) as b,
        ticket_store(a, port),
    ):
        assert register(a, port)["state"] == "active"
        assert set(channels(dsn)) == {"securecore-signing-a"}
        token_b = call(b, "POST", "/v1/sessions")[1]["access_token"]
        status, made = plugin_call(b, token_b, "tickets.create", {"title": "through b"})
        assert status == 200, made
        token_a = call(a, "POST", "/v1/sessions")[1]["access_token"]
        status, listed = plugin_call(a, token_a, "tickets.list", {})
        assert status == 200 and "through b" in json.dumps(listed), listed

        # Two channels in the shared registry, each key wrapped by its own host's KEK:
        # host b's key ring cannot open host a's channel key, nor a's b's.
        held = channels(dsn)
        assert set(held) == {"securecore-signing-a", "securecore-signing-b"}
        (kid_a, wrapped_a, _), (kid_b, wrapped_b, core_kid_b) = (
            held["securecore-signing-a"],
            held["securecore-signing-b"],
        )
        assert kid_a != kid_b
        for opener, kid, wrapped in (
            (ring(tmp_path, "b"), kid_a, wrapped_a),
            (ring(tmp_path, "a"), kid_b, wrapped_b),
        ):
            with pytest.raises(EnvelopeError):
                open_envelope(
                    opener, Envelope.from_bytes(base64.b64decode(wrapped)), context_of(kid)
                )
        # The plugin accepts a channel's messages from the host that set it up only: a
        # message on a's channel signed with b's key (b being a core the plugin serves)
        # is refused before it is opened.
        key_a = open_envelope(
            ring(tmp_path, "a"), Envelope.from_bytes(base64.b64decode(wrapped_a)), context_of(kid_a)
        )
        forged = seal_message(
            key_a,
            kid_a,
            sender=CORE_ADDRESS,
            recipient="plugin/example",
            payload={"op": "tickets.list", "args": {}, "caller": "admin/alice"},
            sign=lambda data: ring(tmp_path, "b").sign(data, kid=core_kid_b),
        )
        connection = http.client.HTTPSConnection(
            "localhost", port, context=context(a["tls"], client="core"), timeout=10
        )
        try:
            connection.request(
                "POST",
                "/securecore/v1/call",
                body=json.dumps(forged).encode(),
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            status, answer = response.status, json.loads(response.read())
        finally:
            connection.close()
        assert status == 400 and answer["error"]["code"] == "bad_signature", answer


def context_of(kid: str) -> bytes:
    """The associated data a channel key of plugin "example" is wrapped under."""
    return f"securecore/plugin-channel/example/{kid}".encode()
