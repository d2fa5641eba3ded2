"""Sessions end with the certificate they are bound to: revoke_by_certificate, note_certificate."""

from __future__ import annotations

from pathlib import Path

import pytest

from securecore.sessions.manager import SessionManager
from securecore.sessions.tokens import TokenError
from tests.support.keyrings import software_ring


@pytest.fixture
def sessions(tmp_path: Path) -> SessionManager:
    manager = SessionManager(software_ring(tmp_path), tmp_path / "sessions.db")
    yield manager
    manager.close()


def issue(sessions: SessionManager, principal: str, thumbprint: str, serial: str):
    sessions.note_certificate(thumbprint, serial)
    return sessions.create(principal, thumbprint)


def test_a_revoked_serial_ends_the_sessions_bound_to_it_and_no_other(sessions) -> None:
    lost = [issue(sessions, "admin/alice", "thumb-lost", "A1B2") for _ in range(2)]
    kept = issue(sessions, "admin/alice", "thumb-new", "c3d4")  # her new certificate
    ended = sessions.revoke_by_certificate(["a1b2", "ffff"], reason="certificate revoked (CRL)")
    assert sorted(e["id"] for e in ended) == sorted(p.session_id for p in lost)
    assert {e["serial"] for e in ended} == {"a1b2"}
    for pair in lost:
        with pytest.raises(TokenError) as refused:
            sessions.verify(pair.access_token, "thumb-lost")
        assert refused.value.code == "revoked"
        with pytest.raises(TokenError):
            sessions.refresh(pair.refresh_token, "thumb-lost")
    assert sessions.verify(kept.access_token, "thumb-new")["sid"] == kept.session_id
    assert sessions.revoke_by_certificate(["a1b2"], reason="again") == []  # once, audited once


def test_a_revoked_certificate_gets_no_new_session(sessions) -> None:
    sessions.revoke_by_certificate(["a1b2"], reason="certificate revoked (CRL)")
    with pytest.raises(TokenError) as refused:
        sessions.note_certificate("thumb-lost", "A1B2")
    assert refused.value.code == "certificate_revoked"
    sessions.note_certificate("thumb-new", "c3d4")  # any other certificate still can


def test_a_large_crl_is_taken_in_bounded_statements(sessions) -> None:
    pair = issue(sessions, "dmz/dmz-01", "thumb", "1234")
    serials = [format(n, "x") for n in range(5000, 7000)] + ["1234"]
    assert [e["id"] for e in sessions.revoke_by_certificate(serials, "CRL")] == [pair.session_id]
