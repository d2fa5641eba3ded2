"""The policy engine in the request path, after identity and before any handler.

The decision and its audit record are made in a worker thread: the audit
record is durable (fsynced) before the request goes on, and the event loop
never waits on a disk.
"""

from __future__ import annotations

import anyio.to_thread

from securecore.policy.engine import PolicyEngine, RequestContext
from securecore.server.app import OPEN_PATHS
from securecore.server.errors import error_response

STATUS = {"acl": 403, "intrusion": 403, "trust": 403, "rate_limit": 429, "emergency": 503}


class PolicyMiddleware:
    def __init__(self, app, engine: PolicyEngine) -> None:
        self.app, self.engine = app, engine
        self.in_flight, self.capacity = 0, 1000

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        principal = scope.get("state", {}).get("principal")
        client = scope.get("client") or ("", 0)
        context = RequestContext(
            source=client[0],
            principal=principal.id if principal else "unknown",
            load=self.in_flight / self.capacity,
            operator=bool(principal and principal.kind == "admin")
            and scope["path"].startswith("/v1/admin/"),
        )
        decision = await anyio.to_thread.run_sync(self.engine.decide, context)
        if not decision.allowed:
            response = error_response(STATUS[decision.stage], decision.reason, decision.stage)
            if decision.retry_after:
                response.headers["Retry-After"] = str(max(1, round(decision.retry_after)))
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
