"""The identity middleware: the verified client certificate becomes the request's Principal.

A request whose certificate names no principal is refused (403), except on the
open paths (health and readiness), which answer any verified client. From a
DMZ edge of `[edge] principals`, the client it relays is the principal
instead (forwarded.py; a relayed identity that does not parse or is refused
answers 400 or 403 and is audited).

The request's state then holds `principal`, `via` (the edge that relayed it,
or None) and `source` (the client's address: the edge's x-forwarded-for, or
the socket peer); request_source() and relayed_by() read them.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from securecore.server.errors import error_response
from securecore.server.forwarded import EdgeTrust, ForwardedIdentityError
from securecore.server.identity import IdentityError, principal_from_scope

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# What a monitoring principal (the site's Prometheus, REQ-MON-8) may read: its
# certificate opens no session, no plugin and no admin route.
MONITORING_PATHS = OPEN_PATHS | {"/metrics"}
# Who may read /metrics (REQ-MON-9): the site's Prometheus and the administrators.
# The series name plugins, principals' intrusion responses, the audit log's size and
# the witnesses' state: nothing a plugin, a core or edge host, or a client relayed by
# the edge needs, and a map of the site for one that is compromised. Read on a direct
# connection only: the edge routes no /metrics (REQ-EDGE-3), so a relayed request for it
# is refused here as well.
METRICS_PATH = "/metrics"
METRICS_READERS = frozenset({"monitoring", "admin"})


class IdentityMiddleware:
    def __init__(self, app: ASGIApp, trust_domain: str, edge: EdgeTrust | None = None) -> None:
        self.app, self.trust_domain, self.edge = app, trust_domain, edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            principal = principal_from_scope(scope, self.trust_domain)
        except IdentityError as error:
            if scope["path"] not in OPEN_PATHS:
                await error_response(403, str(error), "identity_unknown")(scope, receive, send)
                return
            principal = None
        client = scope.get("client")
        source, via = client[0] if client else "", None
        # Only an edge's headers are looked at, and only here.
        if principal is not None and self.edge is not None and self.edge.trusts(principal):
            try:
                caller = self.edge.resolve(principal, scope["headers"], source)
            except ForwardedIdentityError as error:
                if self.edge.audit is not None:
                    details = {"code": error.code, "reason": str(error), "source": source}
                    await self.edge.audit(
                        principal.id, "edge.forwarded_identity", "securecore", "denied", details
                    )
                await error_response(error.status, str(error), error.code)(scope, receive, send)
                return
            principal, source, via = caller.principal, caller.source, caller.via
        if (
            principal is not None
            and principal.kind == "monitoring"
            and scope["path"] not in MONITORING_PATHS
        ):
            await error_response(403, "monitoring principals read /metrics only", "forbidden")(
                scope, receive, send
            )
            return
        if scope["path"] == METRICS_PATH and (
            principal is None or principal.kind not in METRICS_READERS or via is not None
        ):
            await error_response(
                403, "/metrics is read by the monitoring and administrators only", "forbidden"
            )(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["principal"], state["via"], state["source"] = principal, via, source
        await self.app(scope, receive, send)


def request_source(scope: Scope) -> str:
    """The client's address: as the identity middleware found it, else the socket peer."""
    state = scope.get("state", {})
    if "source" in state:
        return state["source"]
    client = scope.get("client")
    return client[0] if client else ""


def relayed_by(scope: Scope) -> dict[str, str]:
    """{"via": EDGE} for an audit record's details when an edge relayed the request, else {}."""
    via = scope.get("state", {}).get("via")
    return {"via": via.id} if via is not None else {}
