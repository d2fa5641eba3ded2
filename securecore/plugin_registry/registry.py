"""The plugin registry and its registration flow (REQ-SVC-2, REQ-SVC-3).

Registration, five steps, each recorded:
  1. request         the plugin's name, vendor, endpoint and security level are well-formed;
                     the endpoint is inside the plugin networks (no connection is made
                     to anywhere else, so a registration cannot aim the core at a service)
  2. security        level at least the configured minimum; the credentials - the client
                     certificate the request came with, verified by mutual TLS - name this
                     very plugin (spiffe://.../plugin/NAME); the vendor is on the allowlist
  3. communication   the core connects to the plugin's endpoint over mutual TLS 1.3, checks
                     that the certificate it presents is this plugin's (before anything is
                     sent: no other plugin's endpoint gets a new key), and gets an answer
                     within the timeout
  4. trust           initial score from vendor reputation, the new-plugin bonus and the
                     history of earlier registrations under this name
  5. completion      state active, a session for the plugin, an audit record
A failing step leaves the plugin `pending` with the reason. States: pending, active,
suspended, revoked (revoked is final). Every call to a plugin is recorded and moves its
trust score; the score's thresholds suspend it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from securecore.errors import SecureCoreError
from securecore.plugin_registry.access import EndpointNotAllowedError, EndpointPolicy
from securecore.plugin_registry.trust import TrustAssessment, TrustFactors, assess
from securecore.server.identity import Principal
from securecore.storage.state_db import StateDatabase

STATES = ("pending", "active", "suspended", "revoked")
BLOCKED = ("suspended", "revoked")  # a plugin principal in these states gets no session
NAME = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
# A DNS name or an IP address (urlsplit has checked the bracketed IPv6 ones).
ENDPOINT_HOST = re.compile(r"^([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}$|^[0-9a-f:.]+$")
OUTCOMES = ("success", "failure", "violation", "auth_failure")

SCHEMA = """
CREATE TABLE IF NOT EXISTS plugins (
    name TEXT PRIMARY KEY,
    vendor TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    security_level INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    registered_at REAL NOT NULL,
    certificate_fingerprint TEXT NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0,
    successes INTEGER NOT NULL DEFAULT 0,
    violations INTEGER NOT NULL DEFAULT 0,
    auth_failures INTEGER NOT NULL DEFAULT 0,
    score INTEGER NOT NULL DEFAULT 0,
    channel_kid TEXT,
    channel_key TEXT,            -- wrapped by the HSM key-encryption key
    endpoint_certificate TEXT,   -- pinned at registration (PEM)
    channel_core_kid TEXT        -- the core signing key version the plugin was given
);
-- Each core host's own channel to each plugin (several hosts on one database):
-- its channel key, wrapped by that host's HSM key-encryption key, which no
-- other host holds. HOLDER is the host's signing key name.
CREATE TABLE IF NOT EXISTS plugin_channels (
    plugin TEXT NOT NULL,
    holder TEXT NOT NULL,
    channel_kid TEXT NOT NULL,
    channel_key TEXT NOT NULL,
    endpoint_certificate TEXT NOT NULL,
    channel_core_kid TEXT NOT NULL,
    PRIMARY KEY (plugin, holder)
);
CREATE TABLE IF NOT EXISTS trust_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order of the history
    plugin TEXT NOT NULL,
    time REAL NOT NULL,
    score INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS communications (
    plugin TEXT NOT NULL,
    time REAL NOT NULL,
    outcome TEXT NOT NULL,
    latency_ms REAL,
    detail TEXT NOT NULL DEFAULT ''
);
"""


class RegistrationError(SecureCoreError):
    """A registration step failed; `step` says which (request, security, ...)."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class RegistrationRequest:
    name: str
    vendor: str
    endpoint: str
    security_level: int


@dataclass
class Registration:
    name: str
    state: str
    score: int
    steps: list[dict[str, str]] = field(default_factory=list)
    alerts: list[dict[str, str]] = field(default_factory=list)


ProbeResult = dict[str, Any]
Probe = Callable[[str, str], ProbeResult]  # (plugin name, endpoint) -> result
CHANNEL_COLUMNS = ("channel_kid", "channel_key", "endpoint_certificate", "channel_core_kid")
AuditHook = Callable[[str, str, str, str, dict[str, Any]], Any]


class PluginRegistry:
    def __init__(
        self,
        database: str | Path | StateDatabase,
        *,
        vendors: dict[str, int],
        minimum_security_level: int,
        probe: Probe,
        audit: AuditHook | None = None,
        clock: Callable[[], float] = time.time,
        endpoints: EndpointPolicy | None = None,
        on_blocked: Callable[[str], Any] | None = None,
        holder: str = "",
    ) -> None:
        self.vendors, self.minimum_security_level = vendors, minimum_security_level
        # Whose channels this host uses (its signing key name; plugin_channels): every
        # host of a cluster sets up its own. "" keeps the registering host's channel
        # in the plugin's row (one host, tests).
        self.holder = holder
        # No endpoint is allowed unless the plugin networks are configured.
        self.endpoints = endpoints or EndpointPolicy()
        # Told the name of a plugin that became suspended or revoked (its sessions end).
        self.on_blocked = on_blocked or (lambda name: None)
        self.probe, self.clock = probe, clock
        self.audit = audit or (lambda *args: None)
        self._db = (
            database if isinstance(database, StateDatabase) else StateDatabase.sqlite(database)
        )
        self._db.create(SCHEMA)
        self._add_missing_columns()
        self._lock = threading.Lock()

    def _add_missing_columns(self) -> None:
        """A database made before the plugin channel existed gains its columns."""
        present = {c[0] for c in self._db.execute("SELECT * FROM plugins LIMIT 0").description}
        for column in CHANNEL_COLUMNS:
            if column not in present:
                self._db.execute(f"ALTER TABLE plugins ADD COLUMN {column} TEXT")

    # --- registration ----------------------------------------------------------------

    def register(self, request: RegistrationRequest, principal: Principal) -> Registration:
        steps: list[dict[str, str]] = []

        def passed(step: str, detail: str) -> None:
            steps.append({"step": step, "outcome": "passed", "detail": detail})
            self.audit(
                principal.id, f"plugin.register.{step}", request.name, "success", {"detail": detail}
            )

        try:
            self._check_request(request)
            passed("request", f"{request.endpoint}, level {request.security_level}")
            self._check_security(request, principal)
            passed("security", f"credentials {principal.spiffe_id}, vendor {request.vendor}")
            probe = self.probe(request.name, request.endpoint)
            if not probe.get("ok"):
                raise RegistrationError("communication", probe.get("error", "no answer"))
            what = probe.get("detail") or probe.get("tls_version")
            passed("communication", f"{what} in {probe.get('ms')} ms")
        except RegistrationError as error:
            steps.append({"step": error.step, "outcome": "failed", "detail": str(error)})
            self.audit(
                principal.id,
                f"plugin.register.{error.step}",
                request.name,
                "failure",
                {"detail": str(error)},
            )
            self._store_pending(request, principal, f"{error.step}: {error}")
            return Registration(request.name, "pending", 0, steps)

        history = self._history_penalty(request.name)
        factors = TrustFactors(
            vendor_reputation=self.vendors[request.vendor], security_violations=history
        )
        assessment = assess(request.name, factors, new=True)
        passed("trust", f"initial score {assessment.score} (earlier violations: {history})")
        state = "suspended" if "suspend" in assessment.actions else "active"
        channel = probe.get("channel")
        channel_values = (
            (channel.kid, channel.wrapped_key, channel.certificate, channel.core_kid)
            if channel
            else (None,) * 4
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO plugins (name, vendor, endpoint, security_level, state, reason, "
                "registered_at, certificate_fingerprint, violations, score, channel_kid, "
                "channel_key, endpoint_certificate, channel_core_kid) "
                "VALUES (?, ?, ?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET "
                "vendor = excluded.vendor, endpoint = excluded.endpoint, "
                "security_level = excluded.security_level, "
                # A suspended plugin stays suspended when it registers again (with a
                # new channel): only an operator's approval reactivates it.
                "state = CASE WHEN plugins.state = 'suspended' THEN 'suspended' "
                "ELSE excluded.state END, "
                "reason = CASE WHEN plugins.state = 'suspended' THEN plugins.reason ELSE '' END, "
                "certificate_fingerprint = excluded.certificate_fingerprint, "
                "violations = excluded.violations, score = excluded.score, "
                "channel_kid = excluded.channel_kid, channel_key = excluded.channel_key, "
                "endpoint_certificate = excluded.endpoint_certificate, "
                "channel_core_kid = excluded.channel_core_kid",
                (
                    request.name,
                    request.vendor,
                    request.endpoint,
                    request.security_level,
                    state,
                    self.clock(),
                    principal.fingerprint,
                    history,
                    assessment.score,
                    *channel_values,
                ),
            )
            # A new registration (after a rotation: a new certificate, a new core key)
            # replaces every host's channel; the others set theirs up again.
            self._db.execute("DELETE FROM plugin_channels WHERE plugin = ?", (request.name,))
            if channel and self.holder:
                self._keep_channel(request.name, channel)
            self._history(request.name, assessment.score, "registered")
        state = (self.get(request.name) or {})["state"]  # the row written above
        passed("completion", f"state {state}")
        return Registration(
            request.name,
            state,
            assessment.score,
            steps,
            [vars(alert) for alert in assessment.alerts],
        )

    def _check_request(self, request: RegistrationRequest) -> None:
        if not NAME.match(request.name):
            raise RegistrationError("request", f"name {request.name!r}: [a-z][a-z0-9-]{{1,62}}")
        try:  # urlsplit and .port raise ValueError on a bad bracket, host or port
            url = urlsplit(request.endpoint)
            usable = bool(url.port and ENDPOINT_HOST.match(url.hostname or ""))
        except ValueError:
            usable = False
        if (
            not usable
            or url.scheme != "https"
            or url.path not in ("", "/")
            or url.username
            or url.query
            or url.fragment
        ):
            raise RegistrationError("request", f"endpoint {request.endpoint!r}: https://HOST:PORT")
        try:
            self.endpoints.resolve(request.endpoint)
        except EndpointNotAllowedError as error:
            raise RegistrationError("request", f"endpoint not allowed: {error}") from error
        if not isinstance(request.security_level, int) or not 1 <= request.security_level <= 5:
            raise RegistrationError("request", "security_level: an integer 1-5")
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM plugins WHERE name = ?", (request.name,)
            ).fetchone()
        if row and row[0] == "revoked":
            raise RegistrationError("request", f"{request.name} is revoked; it cannot return")

    def _check_security(self, request: RegistrationRequest, principal: Principal) -> None:
        if request.security_level < self.minimum_security_level:
            raise RegistrationError(
                "security",
                f"security level {request.security_level} is below {self.minimum_security_level}",
            )
        if principal.kind != "plugin" or principal.name != request.name:
            raise RegistrationError(
                "security",
                f"the client certificate names {principal.id}, not plugin/{request.name}",
            )
        if request.vendor not in self.vendors:
            raise RegistrationError("security", f"vendor {request.vendor!r} is not allowed")

    def _history_penalty(self, name: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT violations FROM plugins WHERE name = ?", (name,)
            ).fetchone()
        return int(row[0]) if row else 0

    def _store_pending(
        self, request: RegistrationRequest, principal: Principal, reason: str
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO plugins (name, vendor, endpoint, security_level, state, reason, "
                "registered_at, certificate_fingerprint) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET reason = excluded.reason "
                "WHERE plugins.state IN ('pending')",
                (
                    request.name,
                    request.vendor,
                    request.endpoint,
                    request.security_level,
                    reason,
                    self.clock(),
                    principal.fingerprint,
                ),
            )

    # --- communication and trust ------------------------------------------------------

    def record_call(
        self, name: str, outcome: str, latency_ms: float | None = None, detail: str = ""
    ) -> TrustAssessment:
        """Record one call to the plugin; update and act on its trust score."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r}: one of {', '.join(OUTCOMES)}")
        now = self.clock()
        with self._lock, self._db.write_transaction():
            row = self._db.execute(
                "SELECT vendor, registered_at, calls, successes, violations, auth_failures, "
                "state, score FROM plugins WHERE name = ?",
                (name,),
            ).fetchone()
            if row is None:
                raise KeyError(name)
            vendor, registered, calls, successes, violations, auth_failures, state, old = row
            calls += 1
            successes += outcome == "success"
            violations += outcome == "violation"
            auth_failures += outcome == "auth_failure"
            assessment = assess(
                name,
                self._factors(vendor, registered, calls, successes, violations, auth_failures, now),
            )
            suspended_now = "suspend" in assessment.actions and state == "active"
            if suspended_now:
                state = "suspended"
            self._db.execute(
                "UPDATE plugins SET calls = ?, successes = ?, violations = ?, "
                "auth_failures = ?, score = ?, state = ?, "
                "reason = CASE WHEN ? = 'suspended' AND reason = '' "
                "THEN 'trust score at or below 30' ELSE reason END WHERE name = ?",
                (calls, successes, violations, auth_failures, assessment.score, state, state, name),
            )
            self._db.execute(
                "INSERT INTO communications VALUES (?, ?, ?, ?, ?)",
                (name, now, outcome, latency_ms, detail),
            )
            if assessment.score != old:
                self._history(name, assessment.score, f"call {outcome}")
        if suspended_now:
            self.audit("securecore", "plugin.suspend", name, "success", {"score": assessment.score})
            self.on_blocked(name)
        return assessment

    def _factors(
        self,
        vendor: str,
        registered: float,
        calls: int,
        successes: int,
        violations: int,
        auth_failures: int,
        now: float,
    ) -> TrustFactors:
        return TrustFactors(
            calls=calls,
            successes=successes,
            security_violations=violations,
            uptime_days=int((now - registered) // 86400),
            auth_failures=auth_failures,
            vendor_reputation=self.vendors.get(vendor, 0),
        )

    def policy_view(self, name: str) -> tuple[str, frozenset[str]] | None:
        """(state, trust actions) of a plugin for the policy engine's trust stage."""
        with self._lock:
            row = self._db.execute(
                "SELECT vendor, registered_at, calls, successes, violations, auth_failures, "
                "state FROM plugins WHERE name = ?",
                (name,),
            ).fetchone()
        if row is None:
            return None
        vendor, registered, calls, successes, violations, auth_failures, state = row
        factors = self._factors(
            vendor, registered, calls, successes, violations, auth_failures, self.clock()
        )
        return state, assess(name, factors).actions

    def _history(self, name: str, score: int, reason: str) -> None:
        self._db.execute(
            "INSERT INTO trust_history (plugin, time, score, reason) VALUES (?, ?, ?, ?)",
            (name, self.clock(), score, reason),
        )

    def set_state(self, name: str, state: str, reason: str, actor: str) -> None:
        if state not in STATES:
            raise ValueError(f"state {state!r}: one of {', '.join(STATES)}")
        with self._lock:
            current = self._db.execute(
                "SELECT state FROM plugins WHERE name = ?", (name,)
            ).fetchone()
            if current is None:
                raise KeyError(name)
            if current[0] == "revoked":
                raise ValueError(f"{name} is revoked; revocation is final")
            self._db.execute(
                "UPDATE plugins SET state = ?, reason = ? WHERE name = ?", (state, reason, name)
            )
        self.audit(actor, f"plugin.{state}", name, "success", {"reason": reason})
        if state in BLOCKED:
            self.on_blocked(name)

    def session_refusal(self, principal: str) -> str | None:
        """Why PRINCIPAL may not hold a session (a suspended or revoked plugin), or None."""
        kind, _, name = principal.partition("/")
        if kind != "plugin":
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT state, reason FROM plugins WHERE name = ?", (name,)
            ).fetchone()
        if row is None or row[0] not in BLOCKED:
            return None
        return f"{principal} is {row[0]}" + (f" ({row[1]})" if row[1] else "")

    def summary(self) -> list[dict[str, Any]]:
        """Every plugin: name, vendor, state, score, calls, successes, reason."""
        columns = ("name", "vendor", "state", "score", "calls", "successes", "reason")
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(columns)} FROM plugins ORDER BY name"  # noqa: S608 - constant
            ).fetchall()
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def channel(self, name: str) -> tuple[str, str, str | None, Any]:
        """(state, endpoint, channel kid, Channel) of a registered plugin, the channel
        being this host's (None while it has none); KeyError if none is registered."""
        from securecore.plugin_registry.channel_client import Channel

        with self._lock:
            row = self._db.execute(
                "SELECT state, endpoint, channel_kid, channel_key, endpoint_certificate, "
                "channel_core_kid FROM plugins WHERE name = ?",
                (name,),
            ).fetchone()
            if row is not None and self.holder:
                own = self._db.execute(
                    "SELECT channel_kid, channel_key, endpoint_certificate, channel_core_kid "
                    "FROM plugin_channels WHERE plugin = ? AND holder = ?",
                    (name, self.holder),
                ).fetchone()
                row = (*row[:2], *(own or (None,) * 4))
        if row is None:
            raise KeyError(name)
        state, endpoint, kid, wrapped, certificate, core_kid = row
        channel = Channel(kid, wrapped, certificate, core_kid) if kid else None
        return state, endpoint, kid, channel

    def keep_channel(self, name: str, channel: Any) -> None:
        """This host's new channel to plugin NAME (set up before its first call)."""
        with self._lock:
            self._keep_channel(name, channel)

    def _keep_channel(self, name: str, channel: Any) -> None:
        self._db.execute(
            "INSERT INTO plugin_channels (plugin, holder, channel_kid, channel_key, "
            "endpoint_certificate, channel_core_kid) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (plugin, holder) DO UPDATE SET channel_kid = excluded.channel_kid, "
            "channel_key = excluded.channel_key, "
            "endpoint_certificate = excluded.endpoint_certificate, "
            "channel_core_kid = excluded.channel_core_kid",
            (
                name,
                self.holder,
                channel.kid,
                channel.wrapped_key,
                channel.certificate,
                channel.core_kid,
            ),
        )

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            cursor = self._db.execute("SELECT * FROM plugins WHERE name = ?", (name,))
            row = cursor.fetchone()
            if row is None:
                return None
            plugin = dict(zip([c[0] for c in cursor.description], row, strict=True))
            plugin["trust_history"] = [
                {"time": t, "score": s, "reason": r}
                for t, s, r in self._db.execute(
                    "SELECT time, score, reason FROM trust_history WHERE plugin = ? ORDER BY id",
                    (name,),
                )
            ]
        return plugin

    def close(self) -> None:
        self._db.close()
