"""Access and refresh tokens: what is accepted, what is refused, and why."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from securecore.keys.base import KeyRing
from securecore.sessions import tokens
from securecore.sessions.manager import SessionManager
from securecore.sessions.tokens import TokenError
from tests.support.keyrings import software_ring


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return software_ring(tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sessions(ring: KeyRing, tmp_path: Path, clock: Clock) -> SessionManager:
    return SessionManager(ring, tmp_path / "sessions.db", clock=clock, max_sessions=2)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, claims: dict, signature: bytes = b"") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


def claims_of(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_tokens_are_standard_es256_jws(ring: KeyRing, sessions: SessionManager) -> None:
    pair = sessions.create("admin/alice")
    head, body, signature = pair.access_token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    assert header == {"alg": "ES256", "typ": "at+jwt", "kid": "securecore-signing-v1"}
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    assert len(raw) == 64  # raw r || s, as RFC 7518 3.4 says, not DER
    public = ring.backend.public_key("securecore-signing-v1")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    assert sessions.verify(pair.access_token)["sub"] == "admin/alice"


def refused(sessions: SessionManager, token: str) -> str:
    with pytest.raises(TokenError) as caught:
        sessions.verify(token)
    return caught.value.code


def test_alg_none_and_algorithm_confusion_are_refused(ring, sessions: SessionManager) -> None:
    good = claims_of(sessions.create("admin/alice").access_token)
    assert refused(sessions, forge({"alg": "none", "typ": "at+jwt", "kid": "x"}, good)) == (
        "alg_not_allowed"
    )
    # HS256 with the public key as the HMAC secret: the classic confusion attack.
    public_pem = ring.backend.public_key("securecore-signing-v1").public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "securecore-signing-v1"}
    unsigned = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(good).encode())}"
    mac = hmac.new(public_pem, unsigned.encode(), hashlib.sha256).digest()
    assert refused(sessions, f"{unsigned}.{b64(mac)}") == "alg_not_allowed"


def test_unknown_kid_and_changed_claims_are_refused(sessions: SessionManager) -> None:
    token = sessions.create("admin/alice").access_token
    claims = claims_of(token)
    signature = base64.urlsafe_b64decode(token.split(".")[2] + "==")
    unknown = {"alg": "ES256", "typ": "at+jwt", "kid": "securecore-signing-v9"}
    assert refused(sessions, forge(unknown, claims, signature)) == "unknown_kid"
    elevated = dict(claims, sub="admin/root")
    header = {"alg": "ES256", "typ": "at+jwt", "kid": "securecore-signing-v1"}
    assert refused(sessions, forge(header, elevated, signature)) == "bad_signature"
    assert refused(sessions, "not.a-token") == "malformed"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"aud": "another-api"}, "wrong_audience"),
        ({"iss": "someone-else"}, "wrong_issuer"),
        ({"exp": 1_700_000_000}, "expired"),
        ({"nbf": 1_900_000_000}, "not_yet_valid"),
    ],
)
def test_wrong_audience_issuer_and_times_are_refused(
    ring: KeyRing, sessions: SessionManager, change: dict, code: str
) -> None:
    claims = claims_of(sessions.create("admin/alice").access_token)
    token = tokens.issue(ring, {**claims, **change})
    assert refused(sessions, token) == code


def test_refresh_rotates_and_reuse_revokes_the_session(sessions: SessionManager, clock) -> None:
    first = sessions.create("plugin/plugin-01")
    sessions.verify(first.access_token)  # now cached
    clock.now += 60
    second = sessions.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    assert sessions.verify(second.access_token)["sid"] == first.session_id
    # The old refresh token again: someone copied it. The session ends ...
    with pytest.raises(TokenError) as caught:
        sessions.refresh(first.refresh_token)
    assert caught.value.code == "refresh_reuse"
    # ... for every token of it, cached or not.
    assert refused(sessions, first.access_token) == "revoked"
    assert refused(sessions, second.access_token) == "revoked"
    with pytest.raises(TokenError):
        sessions.refresh(second.refresh_token)


def test_idle_sessions_expire_and_the_session_limit_holds(sessions: SessionManager, clock) -> None:
    one = sessions.create("admin/alice")
    sessions.create("admin/alice")
    with pytest.raises(TokenError) as caught:
        sessions.create("admin/alice")
    assert caught.value.code == "too_many_sessions"
    clock.now += 901  # idle longer than 15 minutes
    assert refused(sessions, one.access_token) in ("expired",)
    with pytest.raises(TokenError) as refreshed:
        sessions.refresh(one.refresh_token)
    assert refreshed.value.code == "expired"
    # Idle sessions no longer count against the limit.
    sessions.create("admin/alice")


def test_use_keeps_a_session_alive_and_reaches_the_database(
    ring: KeyRing, clock, tmp_path: Path
) -> None:
    sessions = SessionManager(ring, tmp_path / "sessions.db", clock=clock, access_ttl=3600)
    pair = sessions.create("admin/alice")
    clock.now += 600
    sessions.verify(pair.access_token)  # use is noted in memory, written later
    clock.now += 600  # 1,200 s after creation (idle limit 900), 600 s after the last use
    assert sessions.verify(pair.access_token)["sid"] == pair.session_id
    sessions.close()  # writes what is noted
    other = SessionManager(ring, tmp_path / "sessions.db", clock=clock)
    assert [s["last_seen"] for s in other.list_live()] == [clock.now]
    other.close()


def test_explicit_revocation_ends_cached_tokens_at_once(sessions: SessionManager) -> None:
    pair = sessions.create("admin/alice")
    sessions.verify(pair.access_token)
    sessions.revoke(pair.session_id, "operator request")
    assert refused(sessions, pair.access_token) == "revoked"


def test_a_retired_signing_key_ends_its_tokens(ring: KeyRing, sessions, tmp_path) -> None:
    token = sessions.create("admin/alice").access_token
    ring.backend.create_version("securecore-signing", "ec_p256")
    (tmp_path / "keys" / "securecore-signing-v1.pem").unlink()
    fresh = SessionManager(ring, tmp_path / "sessions.db")  # no cache
    with pytest.raises(TokenError) as caught:
        fresh.verify(token)
    assert caught.value.code == "unknown_kid"


def test_a_bound_token_needs_its_certificate(sessions: SessionManager) -> None:
    pair = sessions.create("admin/alice", certificate_thumbprint="thumb-of-alice")
    assert claims_of(pair.access_token)["cnf"] == {"x5t#S256": "thumb-of-alice"}
    assert sessions.verify(pair.access_token, "thumb-of-alice")["sub"] == "admin/alice"
    with pytest.raises(TokenError) as caught:
        sessions.verify(pair.access_token, "thumb-of-mallory")
    assert caught.value.code == "binding_mismatch"
    with pytest.raises(TokenError) as refreshed:
        sessions.refresh(pair.refresh_token, "thumb-of-mallory")
    assert refreshed.value.code == "binding_mismatch"
    # The refresh token was not spent by the refused attempt.
    assert sessions.refresh(pair.refresh_token, "thumb-of-alice").session_id == pair.session_id


def test_a_suspended_or_revoked_principal_gets_no_session_and_no_refresh(
    sessions: SessionManager,
) -> None:
    blocked: dict[str, str] = {}
    sessions.refusal = blocked.get
    held = sessions.create("plugin/example", "thumb")
    blocked["plugin/example"] = "plugin/example is suspended"
    with pytest.raises(TokenError, match="is suspended") as refused:
        sessions.create("plugin/example", "thumb")
    assert refused.value.code == "principal_blocked"
    with pytest.raises(TokenError) as refused:
        sessions.refresh(held.refresh_token, "thumb")
    assert refused.value.code == "principal_blocked"
    assert sessions.create("admin/alice").session_id  # others are not affected
    del blocked["plugin/example"]  # an operator's approval: sessions again
    assert sessions.refresh(held.refresh_token, "thumb").session_id == held.session_id
