"""Sessions across the hosts of a cluster (REQ-HA-11): a token one host issued is honoured
by every host, verified with the pinned public keys of [audit] origin_keys; every check
a token has on one host holds on all of them.

Each "host" is a SessionManager with its own key ring (a signing key name of its own)
on one shared PostgreSQL state database, as `securecore serve` makes it in cluster
mode; the last test runs two real servers.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from securecore.audit.witness import origin_keys_document
from securecore.keys.base import KeyRing, signing_public_keys
from securecore.keys.software import SoftwareKeys
from securecore.sessions import tokens
from securecore.sessions.cluster import ClusterKeys
from securecore.sessions.manager import SessionManager
from securecore.sessions.tokens import TokenError
from securecore.storage.state_db import StateDatabase
from tests.integration.test_audit_cluster import ORIGIN, cluster_config, host_ring
from tests.support.devserver import call, dev_server
from tests.support.postgres import fresh_database


@pytest.fixture
def dsn(postgres_dsn: str, request: pytest.FixtureRequest) -> str:
    # Parametrised tests share their first characters: a digest of the whole name.
    name = hashlib.sha256(request.node.name.encode()).hexdigest()[:16]
    return fresh_database(postgres_dsn, f"sessions_{name}")


def pin(pins: Path, *rings: KeyRing) -> None:
    """Write the pinned keys file: every version of each ring's signing key."""
    keys = {kid: key for ring in rings for kid, key in signing_public_keys(ring).items()}
    pins.write_text(origin_keys_document(ORIGIN, keys))


def host(dsn: str, ring: KeyRing, pins: Path) -> SessionManager:
    state = StateDatabase.postgresql(dsn, "sessions")
    return SessionManager(ring, state, cluster=ClusterKeys(ring, pins, ORIGIN, state.another()))


@pytest.fixture
def cluster(dsn: str, tmp_path: Path):
    """Hosts a and b, both pinned, and a's ring (for forging)."""
    a, b = host_ring(tmp_path, "a"), host_ring(tmp_path, "b")
    pins = tmp_path / "origin-keys.json"
    pin(pins, a, b)
    hosts = host(dsn, a, pins), host(dsn, b, pins)
    yield (*hosts, pins)
    for manager in hosts:
        manager.close()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parts(token: str) -> tuple[dict, dict, str]:
    head, body, signature = token.split(".")
    unb64 = lambda text: base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # noqa: E731
    return json.loads(unb64(head)), json.loads(unb64(body)), signature


def refused(manager: SessionManager, token: str) -> str:
    with pytest.raises(TokenError) as caught:
        manager.verify(token)
    return caught.value.code


def test_a_token_of_one_host_is_honoured_by_the_other_and_refreshed_there(cluster) -> None:
    a, b, _ = cluster
    pair = a.create("admin/alice")
    assert parts(pair.access_token)[0]["kid"] == "securecore-signing-a-v1"
    assert b.verify(pair.access_token)["sub"] == "admin/alice"
    # Refreshed on b: a new pair signed by b, honoured by a.
    again = b.refresh(pair.refresh_token)
    assert parts(again.access_token)[0]["kid"] == "securecore-signing-b-v1"
    assert a.verify(again.access_token)["sid"] == pair.session_id
    # The first refresh token used again, on a: the session ends on both hosts.
    with pytest.raises(TokenError) as caught:
        a.refresh(pair.refresh_token)
    assert caught.value.code == "refresh_reuse"
    for manager in (a, b):
        assert refused(manager, pair.access_token) == "revoked"
        assert refused(manager, again.access_token) == "revoked"
    with pytest.raises(TokenError):
        b.refresh(again.refresh_token)


def test_a_session_revoked_on_one_host_ends_on_the_other(cluster) -> None:
    a, b, _ = cluster
    pair = a.create("admin/alice")
    assert b.verify(pair.access_token)["sub"] == "admin/alice"  # now cached on b
    a.revoke(pair.session_id, "logout")
    assert refused(b, pair.access_token) == "revoked"


def test_an_unpinned_key_and_a_pinned_kid_with_another_key_are_refused(
    cluster, tmp_path: Path
) -> None:
    a, b, pins = cluster
    claims = parts(a.create("admin/alice").access_token)[1]
    # A host whose key is not pinned (an intruder with a key of its own).
    intruder = host_ring(tmp_path, "intruder")
    assert refused(b, tokens.issue(intruder, claims)) == "unknown_kid"
    # The same key id as a's pinned one, signed with another key.
    impostor = KeyRing(SoftwareKeys(tmp_path / "intruder" / "keys"), "securecore-signing-a", "")
    impostor.backend.create_version("securecore-signing-a", "ec_p256")
    forged = tokens.issue(impostor, claims)
    assert parts(forged)[0]["kid"] == "securecore-signing-a-v1"
    assert refused(b, forged) == "bad_signature"
    # A pinned key that is not P-256 (ES256 names the curve).
    other = ec.generate_private_key(ec.SECP384R1())
    document = json.loads(pins.read_text())
    document[ORIGIN]["securecore-signing-c-v1"] = (
        other.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    pins.write_text(json.dumps(document))
    head = {"alg": "ES256", "typ": "at+jwt", "kid": "securecore-signing-c-v1"}
    unsigned = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}"
    assert refused(b, f"{unsigned}.{b64(bytes(64))}") == "unknown_kid"


def test_a_host_unpinned_is_refused_at_once(cluster) -> None:
    a, b, pins = cluster
    assert b.verify(a.create("admin/alice").access_token)
    document = json.loads(pins.read_text())
    del document[ORIGIN]["securecore-signing-a-v1"]
    pins.write_text(json.dumps(document))
    os.utime(pins, ns=(time.time_ns(), time.time_ns() + 1))
    # The file is read again when it changes: no restart.
    assert refused(b, a.create("admin/bob").access_token) == "unknown_kid"


def test_alg_none_and_hs256_with_a_pinned_public_key_are_refused(cluster) -> None:
    a, b, _ = cluster
    claims = parts(a.create("admin/alice").access_token)[1]
    none = {"alg": "none", "typ": "at+jwt", "kid": "securecore-signing-a-v1"}
    unsigned = f"{b64(json.dumps(none).encode())}.{b64(json.dumps(claims).encode())}"
    assert refused(b, f"{unsigned}.{b64(b'x')}") == "alg_not_allowed"
    public_pem = a.ring.backend.public_key("securecore-signing-a-v1").public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "securecore-signing-a-v1"}
    unsigned = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(public_pem, unsigned.encode(), hashlib.sha256).digest()
    assert refused(b, f"{unsigned}.{b64(mac)}") == "alg_not_allowed"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"exp": 1_700_000_000}, "expired"),
        ({"aud": "another-api"}, "wrong_audience"),
        ({"iss": "someone-else"}, "wrong_issuer"),
    ],
)
def test_expired_and_foreign_tokens_of_a_pinned_host_are_refused(
    cluster, change: dict, code: str
) -> None:
    a, b, _ = cluster
    claims = parts(a.create("admin/alice").access_token)[1]
    assert refused(b, tokens.issue(a.ring, {**claims, **change})) == code


def test_a_rotated_peer_key_verifies_for_the_grace_period_only(cluster, dsn: str) -> None:
    a, b, pins = cluster
    old = a.create("admin/alice")
    a.ring.backend.create_version("securecore-signing-a", "ec_p256")
    # The new version is not pinned yet: a keeps signing with the pinned one.
    assert parts(a.create("admin/bob").access_token)[0]["kid"] == "securecore-signing-a-v1"
    pin(pins, a.ring, b.ring)
    os.utime(pins, ns=(time.time_ns(), time.time_ns() + 1))
    rotated = a.create("admin/carol")
    assert parts(rotated.access_token)[0]["kid"] == "securecore-signing-a-v2"
    assert b.verify(rotated.access_token)["sub"] == "admin/carol"
    assert b.verify(old.access_token)["sub"] == "admin/alice"  # within the grace period
    # Past the grace period after v2 was made (as a noted it), b refuses v1.
    b.ring.grace_period = datetime.timedelta(0)
    later = host(dsn, b.ring, pins)  # no cache of verified tokens
    try:
        later.cluster.clock = lambda: time.time() + 1
        assert refused(later, old.access_token) == "unknown_kid"
        assert later.verify(rotated.access_token)["sub"] == "admin/carol"
    finally:
        later.close()


def test_two_servers_honour_each_others_sessions(dsn: str, tmp_path: Path) -> None:
    pins = tmp_path / "origin-keys.json"
    shared = cluster_config(dsn, "a", pins)

    def same_tls(name: str):
        edit = cluster_config(dsn, name, pins)

        def apply(text: str) -> str:
            # One CA for both hosts (as one site has): a client's certificate, and the
            # session bound to it, is the same on either host.
            if name == "b":
                shutil.copytree(tmp_path / "a" / "tls", tmp_path / "b" / "tls", dirs_exist_ok=True)
            return edit(text)

        return apply

    with (
        dev_server(tmp_path / "a", edit_config=shared) as a,
        dev_server(tmp_path / "b", edit_config=same_tls("b")) as b,
    ):
        status, pair = call(a, "POST", "/v1/sessions")
        assert status == 201, pair
        status, current = call(b, "GET", "/v1/sessions/current", token=pair["access_token"])
        assert status == 200, current
        status, again = call(
            b, "POST", "/v1/sessions/refresh", body={"refresh_token": pair["refresh_token"]}
        )
        assert status == 200, again
        assert call(a, "GET", "/v1/sessions/current", token=again["access_token"])[0] == 200
        # The first refresh token again, on a: reuse ends the session on both hosts.
        status, _ = call(
            a, "POST", "/v1/sessions/refresh", body={"refresh_token": pair["refresh_token"]}
        )
        assert status == 401
        for server in (a, b):
            for token in (pair["access_token"], again["access_token"]):
                assert call(server, "GET", "/v1/sessions/current", token=token)[0] == 401
