"""Intrusion detection and its automatic responses.

Every response targets what the evidence is about, so that nobody can turn
a response against someone else:

- Failed authentications (refused tokens) carry the verified certificate
  identity of whoever presented them. They count against that principal
  only: 5 within 5 minutes lock the principal for the block time.
- No automatic response blocks an address. With mutual TLS every request
  that reaches the service carries a certificate the site's CA issued and
  the handshake verified, so the evidence is always about a principal.
  Behind one address (a NAT, a bastion, the management segment) sit other
  principals, administrators among them: ten principals failing from one
  address are ten principals locked, and the address stays open. Evidence
  about an address alone (no certificate, an unknown CA, a revoked
  certificate) never gets past the TLS handshake; such abuse is for the
  host firewall. A certificate that passes the handshake but names no
  principal is refused on every request anyway (identity_unknown), and
  sites issue such certificates to their own hosts (zones that are not
  principal kinds, e.g. the management host), so it is no ground to block
  the address either. Addresses are blocked by operators (`securecore acl
  block`) and by the static ACL of the policy file.
- More than 100 MB transferred by one principal within a minute stops that
  principal for the block time. Transfers are counted on each host (shared
  memory, off the database), and with several serving hosts each stops a
  principal at its share (1/N of the limit), as with rate limits: spread
  over the hosts a principal never moves more than the limit unstopped; all
  on one host, it is stopped at 1/N.
- A privilege-escalation attempt (a non-administrator on the admin API)
  ends the principal's sessions and locks the principal until an operator
  clears the lock: it gets no new session meanwhile.

Each response is returned to the caller, which applies and audits it (who,
what, why, until when); `PolicyState.active_blocks` lists what is in force.
Operators clear blocks with `securecore acl unblock`, also over the local
admin socket, which no automatic response can block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from securecore.policy.state import PolicyState

LOCK_FAILURES, LOCK_WINDOW = 5, 300
TRANSFER_LIMIT, TRANSFER_WINDOW = 100 * 1024 * 1024, 60
# A block that lasts until an operator clears it.
UNTIL_CLEARED = math.inf


@dataclass(frozen=True)
class Response:
    action: str  # lock_principal | stop_transfer | end_session
    kind: str  # the kind of block applied: principal | client
    subject: str
    reason: str
    until: float


class IntrusionDetector:
    def __init__(
        self, state: PolicyState, *, block_seconds: int = 900, serving_hosts: int = 1
    ) -> None:
        if serving_hosts < 1:
            raise ValueError(f"serving_hosts must be at least 1, not {serving_hosts}")
        self.state, self.block_seconds = state, block_seconds
        # This host's share of the transfer limit (see the module's docstring).
        self.transfer_limit = TRANSFER_LIMIT / serving_hosts

    def login_failed(self, principal: str, source: str, now: float) -> list[Response]:
        """A credential presented by PRINCIPAL (a verified certificate identity) was refused."""
        db = self.state.db
        with self.state.lock, db.write_transaction():
            db.execute("INSERT INTO failures VALUES (?, ?, ?)", (principal, source, now))
            db.execute("DELETE FROM failures WHERE time < ?", (now - LOCK_WINDOW,))
            failures = db.execute(
                "SELECT COUNT(*) FROM failures WHERE account = ? AND time > ?",
                (principal, now - LOCK_WINDOW),
            ).fetchone()[0]
        if failures < LOCK_FAILURES:
            return []
        reason = f"{failures} failed logins within {LOCK_WINDOW // 60} minutes"
        return [
            self._apply("lock_principal", "principal", principal, reason, now + self.block_seconds)
        ]

    def transferred(self, principal: str, size: int, now: float) -> list[Response]:
        # A sliding window in the shared counters: every worker adds to the same total.
        total = self.state.counters.add(f"transfer:{principal}", size, now, TRANSFER_WINDOW)
        if total > self.transfer_limit:
            mb = 1024 * 1024
            reason = (
                f"{int(total) // mb} MB within a minute on this host (limit"
                f" {TRANSFER_LIMIT // mb} MB, this host's share {self.transfer_limit / mb:g} MB)"
            )
            return [
                self._apply("stop_transfer", "client", principal, reason, now + self.block_seconds)
            ]
        return []

    def privilege_escalation(self, principal: str, detail: str, now: float) -> list[Response]:
        """PRINCIPAL's sessions end (the caller revokes them) and PRINCIPAL is locked
        until an operator clears it: a new session would otherwise follow at once."""
        reason = f"privilege escalation attempt: {detail}"
        return [self._apply("end_session", "principal", principal, reason, UNTIL_CLEARED)]

    def _apply(self, action: str, kind: str, subject: str, reason: str, until: float) -> Response:
        self.state.block(kind, subject, until, reason)
        return Response(action, kind, subject, reason, until)
