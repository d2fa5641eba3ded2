"""The policy engine: ACL -> intrusion state -> rate limit -> trust, each decision audited.

Every request of the service passes `PolicyEngine.decide` in this order
(REQ-SVC-8; steps 2-5 of REQ-SVC-21). The first refusal ends the evaluation; the
decision (allowed or not, the stage, the reason) is audited together with
the policy version, so an auditor can tell which rules refused what.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from securecore.policy import ratelimit
from securecore.policy.acl import AclRules, check_acl
from securecore.policy.state import PolicyState


@dataclass(frozen=True)
class RequestContext:
    source: str
    principal: str
    session_id: str | None = None
    plugin: str | None = None
    plugin_state: str | None = None
    trust_actions: frozenset[str] = frozenset()
    step_up_done: bool = False
    load: float = 0.0
    # An administrator on the admin API: still subject to ACL, intrusion and
    # rate limits, but not stopped by an emergency shutdown (they must recover).
    operator: bool = False
    # The DMZ edge that relayed the principal's request (server/forwarded.py), if one did.
    via: str | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    stage: str
    reason: str = ""
    retry_after: float = 0.0
    policy_version: str = ""
    # The sequence number of the decision's audit record, once durable (a receipt
    # the client is given, REQ-AUDIT-11); None when no audit log records it.
    audit_record: int | None = None


DEFAULT_CLIENT_LIMIT = ratelimit.Limit(rate=50, burst=100)
DEFAULT_PLUGIN_LIMIT = ratelimit.Limit(rate=200, burst=400)


@dataclass(frozen=True)
class Policy:
    acl: AclRules = field(default_factory=AclRules)
    client_limit: ratelimit.Limit = DEFAULT_CLIENT_LIMIT
    plugin_limit: ratelimit.Limit = DEFAULT_PLUGIN_LIMIT
    source: dict[str, Any] = field(default_factory=dict)

    def shared_by(self, hosts: int) -> Policy:
        """The part of the rate limits each of HOSTS serving hosts enforces: 1/HOSTS of
        every rate and burst (a burst of at least one request), so that the hosts
        together never allow more than the limit."""
        if hosts == 1:
            return self

        def part(limit: ratelimit.Limit) -> ratelimit.Limit:
            return ratelimit.Limit(limit.rate / hosts, max(1.0, limit.burst / hosts))

        return replace(
            self,
            client_limit=part(self.client_limit),
            plugin_limit=part(self.plugin_limit),
            source={**self.source, "serving_hosts": hosts},
        )

    @functools.cached_property
    def version(self) -> str:
        # Read by every decision: computed once (a policy is replaced, never changed).
        canonical = json.dumps(self.source, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Policy:
        def limit(key: str, default: ratelimit.Limit) -> ratelimit.Limit:
            value = data.get(key) or {}
            return ratelimit.Limit(
                float(value.get("rate", default.rate)), float(value.get("burst", default.burst))
            )

        return cls(
            AclRules.from_mapping(data.get("acl", {})),
            limit("client_limit", DEFAULT_CLIENT_LIMIT),
            limit("plugin_limit", DEFAULT_PLUGIN_LIMIT),
            data,
        )


class PolicyEngine:
    def __init__(
        self,
        policy: Policy,
        state: PolicyState,
        *,
        audit: Callable[..., Any] | None = None,
        audit_async: Callable[..., Awaitable[Any]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.policy, self.state = policy, state
        self.audit = audit or (lambda *args: None)
        self.audit_async = audit_async
        self.clock = clock or (lambda: datetime.datetime.now(datetime.UTC).timestamp())

    def decide(self, request: RequestContext) -> Decision:
        decision = self._evaluate(request)
        self.audit(*self._record(request, decision))
        return decision

    async def decide_async(self, request: RequestContext) -> Decision:
        """`decide` on an event loop: the evaluation takes microseconds (shared
        counters, cached blocks), so it runs on the loop; the audit record is
        awaited without holding a thread."""
        decision = self._evaluate(request)
        if self.audit_async is not None:
            seq = await self.audit_async(*self._record(request, decision))
        else:
            seq = self.audit(*self._record(request, decision))
        if not isinstance(seq, int):
            return decision
        # Not dataclasses.replace: it looks the fields up again on every call.
        return Decision(
            decision.allowed,
            decision.stage,
            decision.reason,
            decision.retry_after,
            decision.policy_version,
            seq,
        )

    @staticmethod
    def _record(request: RequestContext, decision: Decision) -> tuple:
        return (
            request.principal,
            f"policy.{decision.stage}",
            request.plugin or "core",
            "allowed" if decision.allowed else "denied",
            {
                "reason": decision.reason,
                "policy_version": decision.policy_version,
                "source": request.source,
                **({"via": request.via} if request.via else {}),
            },
        )

    def _evaluate(self, request: RequestContext) -> Decision:
        now = self.clock()
        version = self.policy.version
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)

        def deny(stage: str, reason: str, retry: float = 0.0) -> Decision:
            return Decision(False, stage, reason, retry, version)

        # One look at the blocks and modes for the whole decision.
        state = self.state.view()
        if state.mode("shutdown") == "on" and not request.operator:
            return deny("emergency", "emergency shutdown: all traffic is stopped")
        refused = check_acl(self.policy.acl, state, request.source, moment)
        if refused:
            return deny("acl", refused)
        # Locks and stops are per principal (intrusion.py): another principal's
        # behaviour never blocks this one.
        for kind, subject in (
            ("principal", request.principal),
            ("client", request.principal),
            ("session", request.session_id),
        ):
            blocked = subject and state.blocked(kind, subject, now)
            if blocked:
                return deny("intrusion", f"{kind} {subject} is blocked: {blocked}")
        emergency = state.mode("emergency") == "on"
        client = ratelimit.scaled(self.policy.client_limit, load=request.load, emergency=emergency)
        verdict = ratelimit.take(self.state, f"client:{request.principal}", client, now)
        if not verdict.allowed:
            return deny("rate_limit", f"{request.principal} is over its rate", verdict.retry_after)
        if request.plugin:
            strict = "strict_rate_limit" in request.trust_actions
            plugin = ratelimit.scaled(
                self.policy.plugin_limit, load=request.load, emergency=emergency, strict=strict
            )
            verdict = ratelimit.take(self.state, f"plugin:{request.plugin}", plugin, now)
            if not verdict.allowed:
                return deny("rate_limit", f"{request.plugin} is over its rate", verdict.retry_after)
            if request.plugin_state != "active":
                return deny("trust", f"plugin {request.plugin} is {request.plugin_state}")
            if "step_up_auth" in request.trust_actions and not request.step_up_done:
                return deny("trust", f"plugin {request.plugin}: step-up authentication required")
        return Decision(True, "trust" if request.plugin else "rate_limit", "", 0.0, version)
