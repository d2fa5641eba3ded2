"""Intrusion detection and its automatic responses (seed 004 3.2, seed 001 6.2).

- 5 failed logins for one account within 5 minutes lock the account.
- 10 failed logins within a minute coming from several sources (distributed
  brute force) block every source involved; 10 from one source block it too.
- More than 100 MB transferred by one client within a minute stops it.
- A privilege-escalation attempt ends the session.
Each response is returned to the caller, which audits it and makes it visible
(`PolicyState.active_blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass

from securecore.policy.state import PolicyState

LOCK_FAILURES, LOCK_WINDOW = 5, 300
BRUTE_FORCE_FAILURES, BRUTE_FORCE_WINDOW = 10, 60
TRANSFER_LIMIT, TRANSFER_WINDOW = 100 * 1024 * 1024, 60


@dataclass(frozen=True)
class Response:
    action: str  # lock_account | block_source | stop_transfer | end_session
    subject: str
    reason: str


class IntrusionDetector:
    def __init__(self, state: PolicyState, *, block_seconds: int = 900) -> None:
        self.state, self.block_seconds = state, block_seconds

    def login_failed(self, account: str, source: str, now: float) -> list[Response]:
        db, responses = self.state.db, []
        with self.state.lock, db.write_transaction():
            db.execute("INSERT INTO failures VALUES (?, ?, ?)", (account, source, now))
            db.execute("DELETE FROM failures WHERE time < ?", (now - LOCK_WINDOW,))
            for_account = db.execute(
                "SELECT COUNT(*) FROM failures WHERE account = ? AND time > ?",
                (account, now - LOCK_WINDOW),
            ).fetchone()[0]
            recent = db.execute(
                "SELECT source, COUNT(*) FROM failures WHERE time > ? GROUP BY source",
                (now - BRUTE_FORCE_WINDOW,),
            ).fetchall()
        until = now + self.block_seconds
        if for_account >= LOCK_FAILURES:
            reason = f"{for_account} failed logins within {LOCK_WINDOW // 60} minutes"
            self.state.block("account", account, until, reason)
            responses.append(Response("lock_account", account, reason))
        total = sum(count for _, count in recent)
        if total >= BRUTE_FORCE_FAILURES:
            reason = f"{total} failed logins within a minute from {len(recent)} source(s)"
            for offender, _ in recent:
                self.state.block("ip", offender, until, reason)
                responses.append(Response("block_source", offender, reason))
        return responses

    def transferred(self, client: str, size: int, now: float) -> list[Response]:
        # A sliding window in the shared counters: every worker adds to the same total.
        total = self.state.counters.add(f"transfer:{client}", size, now, TRANSFER_WINDOW)
        if total > TRANSFER_LIMIT:
            reason = f"{int(total) // (1024 * 1024)} MB within a minute (limit 100 MB)"
            self.state.block("client", client, now + self.block_seconds, reason)
            return [Response("stop_transfer", client, reason)]
        return []

    def privilege_escalation(self, subject: str, detail: str, now: float) -> list[Response]:
        """End the session(s) of SUBJECT (a session id, or a principal whose sessions all end)."""
        reason = f"privilege escalation attempt: {detail}"
        self.state.block("session", subject, now + self.block_seconds, reason)
        return [Response("end_session", subject, reason)]
