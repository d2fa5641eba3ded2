"""Sessions of principals: short-lived access tokens, refresh tokens rotated on use.

- An access token lives `access_ttl` seconds. Verified tokens are cached until
  their expiry - never longer, and a revoked session's tokens fail at once.
- A refresh token is returned once and stored only as its SHA-256. Using it
  gives a new pair and retires it; using a retired refresh token again is
  reuse (a stolen token): the whole session is revoked (RFC 6819 5.2.2.3).
- A session unused for `idle_timeout` seconds expires; a principal may hold
  at most `max_sessions` live sessions.
- A principal that is suspended or revoked (`refusal` says why, e.g. a plugin
  the registry suspended) gets no session and cannot refresh one.
- A session ends when the certificate it is bound to is revoked: the serial
  of each certificate that sessions are issued to is noted, and a CRL that
  names it revokes them (`revoke_by_certificate`).
State lives in SQLite (the service's database) or in PostgreSQL ([state]
backend), so every worker - and in cluster mode every host - sees the same
sessions, refresh tokens and revocations: a pair issued by one host is
refreshed on any, and a reused refresh token revokes the session for all.
In cluster mode (`cluster`, securecore.sessions.cluster) a host also accepts
the access tokens the other hosts signed, with their pinned public keys.
Issuing, refreshing and revoking commit durably before they answer; the
"last seen" time that idleness is measured by is noted in memory on use and
written by a background thread every FLUSH_EVERY seconds, so checking a
token never waits on a disk.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securecore.keys.base import KeyRing
from securecore.sessions import tokens
from securecore.sessions.cluster import ClusterKeys
from securecore.sessions.tokens import TokenError
from securecore.storage.state_db import StateDatabase

TOUCH_EVERY = 10.0  # seconds: a session's last_seen is renewed at most this often
FLUSH_EVERY = 2.0  # seconds between writes of the renewed last_seen times

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL NOT NULL,
    revoked_at REAL,
    revoked_reason TEXT,
    binding TEXT
);
CREATE INDEX IF NOT EXISTS sessions_principal ON sessions (principal);
CREATE TABLE IF NOT EXISTS session_certificates (
    binding TEXT PRIMARY KEY,
    serial TEXT NOT NULL,
    noted REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS session_certificates_serial ON session_certificates (serial);
CREATE TABLE IF NOT EXISTS revoked_certificates (
    serial TEXT PRIMARY KEY,
    noted REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    digest TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id),
    expires REAL NOT NULL,
    used_at REAL
);
"""


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    session_id: str


_BY_SERIAL = (
    "SELECT s.id, s.principal, c.serial FROM sessions s JOIN session_certificates c "
    "ON c.binding = s.binding WHERE s.revoked_at IS NULL AND c.serial IN "
)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionManager:
    def __init__(
        self,
        ring: KeyRing,
        database: str | Path | StateDatabase,
        *,
        issuer: str = "securecore",
        audience: str = "securecore-api",
        access_ttl: int = 300,
        refresh_ttl: int = 8 * 3600,
        idle_timeout: int = 900,
        max_sessions: int = 5,
        clock: Callable[[], float] = time.time,
        refusal: Callable[[str], str | None] | None = None,
        cluster: ClusterKeys | None = None,
    ) -> None:
        self.cluster = cluster
        # PRINCIPAL -> why it may hold no session (suspended, revoked), or None.
        self.refusal = refusal or (lambda principal: None)
        self.ring, self.issuer, self.audience = ring, issuer, audience
        self.access_ttl, self.refresh_ttl = access_ttl, refresh_ttl
        self.idle_timeout, self.max_sessions = idle_timeout, max_sessions
        self.clock = clock
        self._db = (
            database if isinstance(database, StateDatabase) else StateDatabase.sqlite(database)
        )
        self._db.create(SCHEMA)
        self._reader = self._db.another()
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._touches: dict[str, float] = {}
        self._touch_lock = threading.Lock()
        self._stopping = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_touches_until_closed, name="session-last-seen", daemon=True
        )
        self._flusher.start()

    # --- issuing -------------------------------------------------------------------

    def _check_standing(self, principal: str) -> None:
        refused = self.refusal(principal)
        if refused:
            raise TokenError("principal_blocked", f"no session: {refused}")

    def create(self, principal: str, certificate_thumbprint: str | None = None) -> TokenPair:
        self._check_standing(principal)
        now = self.clock()
        with self._lock, self._db.write_transaction():
            live = self._db.execute(
                "SELECT COUNT(*) FROM sessions WHERE principal = ? AND revoked_at IS NULL "
                "AND last_seen >= ?",
                (principal, now - self.idle_timeout),
            ).fetchone()[0]
            if live >= self.max_sessions:
                raise TokenError(
                    "too_many_sessions",
                    f"{principal} has {live} live sessions (at most {self.max_sessions})",
                )
            session_id = str(uuid.uuid4())
            self._db.execute(
                "INSERT INTO sessions (id, principal, created, last_seen, binding) "
                "VALUES (?, ?, ?, ?, ?)",
                (session_id, principal, now, now, certificate_thumbprint),
            )
            refresh = self._new_refresh(session_id, now)
        access = self._access(principal, session_id, now, certificate_thumbprint)
        return TokenPair(access, refresh, self.access_ttl, session_id)

    def _access(
        self, principal: str, session_id: str, now: float, thumbprint: str | None = None
    ) -> str:
        claims: dict[str, Any] = {}
        if thumbprint:
            # RFC 8705: the token is bound to the client certificate it was issued to.
            claims["cnf"] = {"x5t#S256": thumbprint}
        return tokens.issue(
            self.ring,
            {
                **claims,
                "iss": self.issuer,
                "aud": self.audience,
                "sub": principal,
                "sid": session_id,
                "jti": str(uuid.uuid4()),
                "iat": int(now),
                "nbf": int(now),
                "exp": int(now) + self.access_ttl,
            },
            self.cluster.issuing_kid() if self.cluster else None,
        )

    def _new_refresh(self, session_id: str, now: float) -> str:
        token = secrets.token_urlsafe(32)
        self._db.execute(
            "INSERT INTO refresh_tokens (digest, session_id, expires) VALUES (?, ?, ?)",
            (_digest(token), session_id, now + self.refresh_ttl),
        )
        return token

    def refresh(self, refresh_token: str, certificate_thumbprint: str | None = None) -> TokenPair:
        now = self.clock()
        reused = False
        with self._lock, self._db.write_transaction():
            row = self._db.execute(
                "SELECT r.session_id, r.expires, r.used_at, s.principal, s.revoked_at, "
                "s.last_seen, s.binding FROM refresh_tokens r "
                "JOIN sessions s ON s.id = r.session_id WHERE r.digest = ?",
                (_digest(refresh_token),),
            ).fetchone()
            if row is None:
                raise TokenError("invalid_refresh", "unknown refresh token")
            session_id, expires, used_at, principal, revoked_at, last_seen, binding = row
            if binding and binding != certificate_thumbprint:
                # A refresh token is usable only with the certificate it was issued to.
                raise TokenError("binding_mismatch", "refresh token of another certificate")
            self._check_standing(principal)
            if used_at is not None:
                # Someone holds a copy of a token that was already exchanged: the
                # revocation is committed, then the caller is refused.
                self._revoke(session_id, "refresh token reuse", now)
                reused = True
            else:
                if revoked_at is not None:
                    raise TokenError("revoked", "the session is revoked")
                if now > expires or now - last_seen > self.idle_timeout:
                    raise TokenError("expired", "the session has expired")
                self._db.execute(
                    "UPDATE refresh_tokens SET used_at = ? WHERE digest = ?",
                    (now, _digest(refresh_token)),
                )
                self._db.execute(
                    "UPDATE sessions SET last_seen = ? WHERE id = ?", (now, session_id)
                )
                new_refresh = self._new_refresh(session_id, now)
        if reused:
            raise TokenError("refresh_reuse", "refresh token reused: session revoked")
        access = self._access(principal, session_id, now, binding)
        return TokenPair(access, new_refresh, self.access_ttl, session_id)

    # --- checking -------------------------------------------------------------------

    def verify(
        self, access_token: str, certificate_thumbprint: str | None = None
    ) -> dict[str, Any]:
        """The claims of a live token; a certificate-bound token needs that certificate."""
        now = self.clock()
        cached = self._cache.get(access_token)
        if cached is not None and now <= cached[0]:
            claims = cached[1]
        else:
            _, claims = tokens.verify(
                self.ring,
                access_token,
                issuer=self.issuer,
                audience=self.audience,
                now=now,
                leeway=0,
                peers=self.cluster.peer_key if self.cluster else None,
            )
            self._cache[access_token] = (claims["exp"], claims)
            if len(self._cache) > 100_000:
                self._expire_cache(now)
        bound = claims.get("cnf", {}).get("x5t#S256")
        if bound and bound != certificate_thumbprint:
            raise TokenError("binding_mismatch", "the token is bound to another certificate")
        # Revocation and idleness are checked on every use, cached or not, on a
        # connection that only reads: a read overlapping a write on a shared
        # connection would make that write fail at once ("database is
        # locked") whenever another worker committed in between.
        row = self._reader.execute(
            "SELECT revoked_at, last_seen FROM sessions WHERE id = ?", (claims["sid"],)
        ).fetchone()
        if row is None or row[0] is not None:
            raise TokenError("revoked", "the session is revoked")
        last_seen = max(row[1], self._touches.get(claims["sid"], 0.0))
        if now - last_seen > self.idle_timeout:
            raise TokenError("expired", "the session has been idle too long")
        if now - last_seen > TOUCH_EVERY:
            with self._touch_lock:
                self._touches[claims["sid"]] = now
        return claims

    def _flush_touches_until_closed(self) -> None:
        while not self._stopping.wait(FLUSH_EVERY):
            self._flush_touches()

    def _flush_touches(self) -> None:
        with self._touch_lock:
            touches, self._touches = self._touches, {}
        if touches:
            with self._lock, self._db.write_transaction():
                self._db.executemany(
                    "UPDATE sessions SET last_seen = "
                    "CASE WHEN last_seen < ? THEN ? ELSE last_seen END WHERE id = ?",
                    [(seen, seen, session_id) for session_id, seen in touches.items()],
                )

    def _expire_cache(self, now: float) -> None:
        for token in [t for t, (exp, _) in self._cache.items() if exp < now]:
            del self._cache[token]

    def list_live(self) -> list[dict[str, Any]]:
        """Sessions neither revoked nor idle, newest first."""
        columns = ("id", "principal", "created", "last_seen")
        with self._lock:
            rows = self._db.execute(
                "SELECT id, principal, created, last_seen FROM sessions "
                "WHERE revoked_at IS NULL AND last_seen >= ? ORDER BY last_seen DESC",
                (self.clock() - self.idle_timeout,),
            ).fetchall()
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def revoke_where(
        self, *, session_id: str | None = None, principal: str | None = None, reason: str
    ) -> int:
        """Revoke one session, every session of a principal, or (neither given) all."""
        query = "UPDATE sessions SET revoked_at = ?, revoked_reason = ? WHERE revoked_at IS NULL"
        arguments: list[Any] = [self.clock(), reason]
        if session_id:
            query, arguments = query + " AND id = ?", [*arguments, session_id]
        elif principal:
            query, arguments = query + " AND principal = ?", [*arguments, principal]
        with self._lock:
            return self._db.execute(query, arguments).rowcount

    # --- certificates and their revocation -----------------------------------------

    def note_certificate(self, certificate_thumbprint: str, serial: str) -> None:
        """Remember that the certificate with this x5t#S256 thumbprint has SERIAL (hex),
        before a session is bound to it, so that its revocation can find the session.
        A certificate a loaded CRL revoked gets no session: TokenError (a connection
        made before the CRL changed is still open)."""
        serial = serial.lower()
        if self._reader.execute(
            "SELECT 1 FROM revoked_certificates WHERE serial = ?", (serial,)
        ).fetchone():
            raise TokenError("certificate_revoked", f"certificate {serial} is revoked")
        known = self._reader.execute(
            "SELECT 1 FROM session_certificates WHERE binding = ?", (certificate_thumbprint,)
        ).fetchone()
        if known:
            return
        with self._lock, self._db.write_transaction():
            self._db.execute(
                "INSERT INTO session_certificates (binding, serial, noted) VALUES (?, ?, ?) "
                "ON CONFLICT (binding) DO NOTHING",
                (certificate_thumbprint, serial, self.clock()),
            )

    def revoke_by_certificate(self, serials: Iterable[str], reason: str) -> list[dict[str, str]]:
        """Revoke every live session bound to a certificate with one of SERIALS (hex, as
        a CRL names them); returns those sessions ({id, principal, serial}). A
        session's tokens then fail wherever they are presented, whatever the
        certificate."""
        wanted = sorted({serial.lower() for serial in serials})
        ended: list[dict[str, str]] = []
        now = self.clock()
        for start in range(0, len(wanted), 500):  # bounded statements for any CRL size
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" * len(chunk))  # placeholders only: the serials are bound
            query = _BY_SERIAL + f"({marks})"
            with self._lock, self._db.write_transaction():
                self._db.executemany(
                    "INSERT INTO revoked_certificates (serial, noted) VALUES (?, ?) "
                    "ON CONFLICT (serial) DO NOTHING",
                    [(serial, now) for serial in chunk],
                )
                rows = self._db.execute(query, chunk).fetchall()
                for session_id, _, _ in rows:
                    self._revoke(session_id, reason, now)
            ended += [{"id": r[0], "principal": r[1], "serial": r[2]} for r in rows]
        return ended

    def revoke(self, session_id: str, reason: str) -> None:
        with self._lock:
            self._revoke(session_id, reason, self.clock())

    def _revoke(self, session_id: str, reason: str, now: float) -> None:
        self._db.execute(
            "UPDATE sessions SET revoked_at = ?, revoked_reason = ? "
            "WHERE id = ? AND revoked_at IS NULL",
            (now, reason, session_id),
        )

    def close(self) -> None:
        self._stopping.set()
        self._flusher.join(timeout=10)
        self._flush_touches()
        self._reader.close()
        self._db.close()
        if self.cluster:
            self.cluster.close()
