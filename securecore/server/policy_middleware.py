"""The policy engine in the request path, after identity and before any handler.

The decision is made on the event loop (shared counters and cached blocks
answer in microseconds); its audit record is durable (fsynced) before the
request goes on, awaited without a thread, so the loop never waits on a disk.
Only an intrusion response (rare: a lock, a block) goes to a thread, because
applying it writes to the databases.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from securecore.policy.engine import PolicyEngine, RequestContext
from securecore.server.errors import error_response
from securecore.server.identity_middleware import OPEN_PATHS, request_source
from securecore.server.intrusion_hooks import IntrusionResponder
from securecore.server.plugin_routes import call_path_plugin

STATUS = {"acl": 403, "intrusion": 403, "trust": 403, "rate_limit": 429, "emergency": 503}
RECEIPT = b"audit-record"  # the response header with the decision's audit record number


class PolicyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        engine: PolicyEngine,
        intrusion: IntrusionResponder | None = None,
        plugin_view: Callable[[str], tuple[str, frozenset[str]] | None] | None = None,
        operators: AbstractSet[str] = frozenset(),
    ) -> None:
        self.app, self.engine, self.intrusion = app, engine, intrusion
        # Certificates of local operators (admin_routes.actor_of): like
        # administrators, they keep the admin API during an emergency shutdown.
        self.operators = operators
        # A call to a plugin brings the plugin's rate limit and trust stage in.
        self.plugin_view = plugin_view
        self.in_flight, self.capacity = 0, 1000

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        state = scope.get("state", {})
        principal, via = state.get("principal"), state.get("via")
        plugin = call_path_plugin(scope["path"]) if self.plugin_view else None
        view = self.plugin_view(plugin) if plugin and self.plugin_view else None
        context = RequestContext(
            # The client's address and identity, also when the DMZ edge relayed them.
            source=request_source(scope),
            principal=principal.id if principal else "unknown",
            via=via.id if via else None,
            plugin=plugin if view else None,
            plugin_state=view[0] if view else None,
            trust_actions=view[1] if view else frozenset(),
            load=self.in_flight / self.capacity,
            operator=bool(
                principal and (principal.kind == "admin" or principal.fingerprint in self.operators)
            )
            and scope["path"].startswith("/v1/admin/"),
        )
        decision = await self.engine.decide_async(context)
        # Every answer names the durable audit record of its decision: a receipt the
        # client can later have proved in the log (`securecore audit prove SEQ`).
        receipt = (
            [] if decision.audit_record is None else [(RECEIPT, b"%d" % decision.audit_record)]
        )
        if not decision.allowed:
            response = error_response(STATUS[decision.stage], decision.reason, decision.stage)
            if decision.retry_after:
                response.headers["Retry-After"] = str(max(1, round(decision.retry_after)))
            if receipt:
                response.headers[RECEIPT.decode()] = receipt[0][1].decode()
            await response(scope, receive, send)
            return
        moved = [0]

        async def counting_receive() -> Message:
            message = await receive()
            moved[0] += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and receipt:
                message = {**message, "headers": [*message.get("headers", []), *receipt]}
            moved[0] += len(message.get("body", b""))
            await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            self.in_flight -= 1
            if self.intrusion is not None and principal is not None:
                # More than 100 MB a minute stops the client (REQ-IDS-2).
                responses = self.intrusion.count_transfer(principal.id, moved[0])
                if responses:
                    await anyio.to_thread.run_sync(self.intrusion.apply, responses)
