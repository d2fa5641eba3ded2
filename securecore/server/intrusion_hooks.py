"""Intrusion detection fed from the request path, and its responses carried out.

Failed authentications (refused tokens, counted against the principal that
presented them), the bytes each principal moves, and attempts to use the
admin API without being an administrator go to the IntrusionDetector. Its
responses (lock a principal, stop a client, end its sessions) are applied here and each one is an
audit record saying who, what, why and until when, so operators see them
(`securecore acl list`, the audit log) and can clear them
(`securecore acl unblock`, also over the local admin socket).
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable
from typing import Any

from securecore.policy.intrusion import IntrusionDetector, Response
from securecore.sessions.manager import SessionManager


def until_text(until: float) -> str:
    if until == math.inf:
        return "until cleared by an operator"
    return datetime.datetime.fromtimestamp(until, datetime.UTC).isoformat()


class IntrusionResponder:
    def __init__(
        self,
        detector: IntrusionDetector,
        sessions: SessionManager | None,
        audit: Callable[..., Any],
        clock: Callable[[], float] = time.time,
        counted: Callable[[str], None] | None = None,
    ) -> None:
        self.detector, self.sessions, self.audit, self.clock = detector, sessions, audit, clock
        # Told the action of each response applied (the service counts them for /metrics).
        self.counted = counted

    def authentication_failed(
        self, principal: str, source: str, code: str, via: str | None = None
    ) -> None:
        """VIA: the DMZ edge that relayed the principal's request, if one did."""
        relayed = {"via": via} if via else {}
        self.audit(
            principal,
            "auth.failure",
            "securecore",
            "failure",
            {"code": code, "source": source, **relayed},
        )
        evidence = {"principal": principal, "source": source, "code": code, **relayed}
        self.apply(self.detector.login_failed(principal, source, self.clock()), evidence)

    def transferred(self, principal: str, size: int) -> None:
        self.apply(self.count_transfer(principal, size))

    def count_transfer(self, principal: str, size: int) -> list[Response]:
        """Count the bytes (microseconds, safe on the event loop); the responses due."""
        return self.detector.transferred(principal, size, self.clock()) if size else []

    def privilege_escalation(
        self, principal: str, detail: str, source: str = "", via: str | None = None
    ) -> None:
        responses = self.detector.privilege_escalation(principal, detail, self.clock())
        evidence = {"principal": principal, "request": detail, "source": source}
        self.apply(responses, {**evidence, **({"via": via} if via else {})})

    def apply(self, responses: list[Response], evidence: dict | None = None) -> None:
        for response in responses:
            details: dict[str, Any] = {
                "kind": response.kind,
                "reason": response.reason,
                "until": until_text(response.until),
                **({"evidence": evidence} if evidence else {}),
            }
            if response.action == "end_session" and self.sessions is not None:
                # The subject is the principal: every session it holds ends.
                details["sessions_revoked"] = self.sessions.revoke_where(
                    principal=response.subject, reason=response.reason
                )
            self.audit(
                "securecore", f"intrusion.{response.action}", response.subject, "success", details
            )
            if self.counted is not None:
                self.counted(response.action)
