"""/v1/admin: operator actions inside the service, for principals of kind `admin` only.

Changes go through the service itself - never beside it - so that the one
audit log writer records them (the actor is the administrator's certificate)
and every worker sees them at once through the shared state. The same routes
are served on the local admin socket (local_admin.py), where the actor is
the local user the kernel names, and no policy or automatic response applies.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from securecore.server.api_schema import Endpoint, body, integer, read_body, string
from securecore.server.errors import error_response
from securecore.server.identity_middleware import relayed_by, request_source
from securecore.server.incident_routes import ENDPOINTS as INCIDENT_ENDPOINTS
from securecore.server.incident_routes import incident_routes

if TYPE_CHECKING:
    # For the annotations only: the routes act on what serve.py built.
    from securecore.incidents.store import IncidentStore
    from securecore.plugin_registry.registry import PluginRegistry
    from securecore.policy.state import PolicyState
    from securecore.server.identity import Principal
    from securecore.server.intrusion_hooks import IntrusionResponder
    from securecore.sessions.manager import SessionManager


class AdminActions:
    """What the routes act on; built by serve.py from the service's parts."""

    def __init__(
        self,
        *,
        audit: Callable[..., int],  # AuditLog.append: (actor, action, target, outcome, details)
        sessions: SessionManager,
        policy_state: PolicyState,
        registry: PluginRegistry,
        snapshot: Callable[..., Any],
        status: Callable[[], dict],
        operators: AbstractSet[str] = frozenset(),
        incidents: IncidentStore | None = None,
    ) -> None:
        self.audit, self.sessions, self.policy_state = audit, sessions, policy_state
        self.incidents = incidents
        self.registry, self.snapshot, self.status = registry, snapshot, status
        # SHA-256 fingerprints of certificates that act as a local operator: the
        # service's own client certificate, whose key only root and the service
        # user on this host hold (playbooks run the admin commands with it).
        # serve.py updates its set in place when the TLS files are read again.
        self.operators = operators


OPERATOR_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def actor_of(
    principal: Principal | None, request: Request, operators: AbstractSet[str]
) -> str | None:
    """Who acts on the admin API: an administrator, or a named local operator; None if neither."""
    if principal is None:
        return None
    if principal.kind == "admin":
        return principal.id
    if principal.fingerprint in operators:
        name = request.headers.get("x-operator", "")
        return f"operator:{name if OPERATOR_NAME.fullmatch(name) else 'unnamed'}@{principal.id}"
    return None


REVOKE = body(
    optional={"session_id": string(64), "principal": string(128), "reason": string(500, 0)}
)
BLOCK = body({"address": string(45)}, {"minutes": integer(1, 525600), "reason": string(500, 0)})
UNBLOCK = body(optional={"address": string(45), "principal": string(128)})
REASON = body(optional={"reason": string(500, 0)})
SHUTDOWN = body({"reason": string(500)})
RECOVER = body({"note": string(500)})
ENDPOINTS = [
    Endpoint(
        "GET", "/v1/admin/status", "Modes, plugins, sessions, audit log", None, (200,), ("admin",)
    ),
    Endpoint("GET", "/v1/admin/sessions", "Live sessions", None, (200,), ("admin",)),
    Endpoint(
        "POST",
        "/v1/admin/sessions/revoke",
        "Revoke a session or a principal's",
        REVOKE,
        (200,),
        ("admin",),
    ),
    Endpoint("GET", "/v1/admin/acl", "Active blocks", None, (200,), ("admin",)),
    Endpoint("POST", "/v1/admin/acl/block", "Block a source address", BLOCK, (200,), ("admin",)),
    Endpoint(
        "POST",
        "/v1/admin/acl/unblock",
        "Unblock a source address or a principal",
        UNBLOCK,
        (200,),
        ("admin",),
    ),
    Endpoint("GET", "/v1/admin/plugins", "Plugins and their trust", None, (200,), ("admin",)),
    Endpoint(
        "POST",
        "/v1/admin/plugins/{name}/{verb}",
        "approve, suspend or revoke a plugin",
        REASON,
        (200,),
        ("admin",),
    ),
    Endpoint(
        "POST",
        "/v1/admin/emergency-shutdown",
        "Stop all traffic, revoke sessions",
        SHUTDOWN,
        (200,),
        ("admin",),
    ),
    Endpoint("POST", "/v1/admin/recover", "End an emergency shutdown", RECOVER, (200,), ("admin",)),
    *INCIDENT_ENDPOINTS,
]


def admin_routes(
    actions: AdminActions,
    intrusion: IntrusionResponder | None = None,
    identify: Callable[[Request], str | None] | None = None,
) -> list[Route]:
    """IDENTIFY names the actor of a request (None: refused); by default the
    administrator or local operator of the client certificate."""

    def admin_only(
        handler: Callable[[Request, str], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if identify is not None:
                actor = identify(request)
                if actor is None:
                    return error_response(403, "local operators only", "forbidden")
                return await handler(request, actor)
            principal = request.state.principal
            actor = actor_of(principal, request, actions.operators)
            if actor is None:
                if principal is not None and intrusion is not None:
                    # A non-administrator on the admin API: a privilege-escalation
                    # attempt, which ends its sessions and locks the principal.
                    detail = f"{request.method} {request.url.path}"
                    await anyio.to_thread.run_sync(
                        intrusion.privilege_escalation,
                        principal.id,
                        detail,
                        request_source(request.scope),
                        relayed_by(request.scope).get("via"),
                    )
                return error_response(403, "administrators only", "forbidden")
            return await handler(request, actor)

        return guarded

    async def audited(
        request: Request, actor: str, action: str, target: str, details: dict
    ) -> None:
        details = {**details, **relayed_by(request.scope)}  # an administrator through the edge
        await anyio.to_thread.run_sync(
            lambda: actions.audit(actor, action, target, "success", details)
        )

    async def status(request: Request, actor: str) -> Response:
        return JSONResponse(await anyio.to_thread.run_sync(actions.status))

    async def sessions_list(request: Request, actor: str) -> Response:
        rows = actions.sessions.list_live()
        return JSONResponse(rows)

    async def sessions_revoke(request: Request, actor: str) -> Response:
        data, refused = await read_body(request, REVOKE)
        if refused:
            return refused
        if bool(data.get("session_id")) == bool(data.get("principal")):
            return error_response(422, "give exactly one of session_id and principal")
        count = actions.sessions.revoke_where(
            session_id=data.get("session_id"),
            principal=data.get("principal"),
            reason=data.get("reason") or f"revoked by {actor}",
        )
        await audited(
            request,
            actor,
            "session.revoke",
            data.get("session_id") or data["principal"],
            {"sessions": count, "reason": data.get("reason", "")},
        )
        return JSONResponse({"revoked": count})

    async def acl_list(request: Request, actor: str) -> Response:
        # None for `until`: the block lasts until an operator clears it.
        return JSONResponse(actions.policy_state.active_blocks(time.time()))

    async def acl_block(request: Request, actor: str) -> Response:
        data, refused = await read_body(request, BLOCK)
        if refused:
            return refused
        try:
            address = str(ipaddress.ip_address(data["address"]))
        except ValueError:
            return error_response(422, f"address {data['address']!r} is not an IP address")
        minutes = data.get("minutes", 60)
        actions.policy_state.block(
            "ip", address, time.time() + minutes * 60, data.get("reason") or f"blocked by {actor}"
        )
        await audited(
            request, actor, "acl.block", address, {"minutes": minutes, "reason": data.get("reason")}
        )
        return JSONResponse({"blocked": address, "minutes": minutes})

    async def acl_unblock(request: Request, actor: str) -> Response:
        data, refused = await read_body(request, UNBLOCK)
        if refused:
            return refused
        if bool(data.get("address")) == bool(data.get("principal")):
            return error_response(422, "give exactly one of address and principal")
        kinds: tuple[str, ...]
        if data.get("address"):
            subject, kinds = data["address"], ("ip",)
        else:
            # A principal's lock (failed logins, privilege escalation) and its stop
            # (transfer limit) both end.
            subject, kinds = data["principal"], ("principal", "client")
        removed = await anyio.to_thread.run_sync(actions.policy_state.unblock, kinds, subject)
        await audited(
            request, actor, "acl.unblock", subject, {"kinds": list(kinds), "removed": removed}
        )
        return JSONResponse({"unblocked": subject, "removed": removed})

    async def plugins_list(request: Request, actor: str) -> Response:
        return JSONResponse(actions.registry.summary())

    async def plugin_state(request: Request, actor: str) -> Response:
        data, refused = await read_body(request, REASON)
        if refused:
            return refused
        name, verb = request.path_params["name"], request.path_params["verb"]
        state = {"approve": "active", "suspend": "suspended", "revoke": "revoked"}.get(verb)
        if state is None:
            return error_response(404, f"no action {verb}")
        try:
            await anyio.to_thread.run_sync(
                lambda: actions.registry.set_state(name, state, data.get("reason") or verb, actor)
            )
        except KeyError:
            return error_response(404, f"no plugin named {name}")
        except ValueError as error:
            return error_response(409, str(error), "conflict")
        return JSONResponse({"plugin": name, "state": state})

    async def emergency_shutdown(request: Request, actor: str) -> Response:
        data, refused = await read_body(request, SHUTDOWN)
        if refused:
            return refused
        # Traffic stops first; then sessions end; then the record and the snapshot.
        actions.policy_state.set_mode("shutdown", "on")
        revoked = actions.sessions.revoke_where(reason=f"emergency shutdown: {data['reason']}")
        path = await anyio.to_thread.run_sync(
            lambda: actions.snapshot(
                reason=f"{data['reason']} (sessions revoked: {revoked})", actor=actor
            )
        )
        return JSONResponse({"shutdown": True, "sessions_revoked": revoked, "snapshot": str(path)})

    async def recover(request: Request, actor: str) -> Response:
        data, refused = await read_body(request, RECOVER)
        if refused:
            return refused
        if actions.policy_state.mode("shutdown") != "on":
            return error_response(409, "the service is not in emergency shutdown", "conflict")
        actions.policy_state.set_mode("shutdown", "off")
        await audited(request, actor, "emergency.recover", "securecore", {"note": data["note"]})
        return JSONResponse({"shutdown": False})

    return [
        Route("/v1/admin/status", admin_only(status)),
        Route("/v1/admin/sessions", admin_only(sessions_list)),
        Route("/v1/admin/sessions/revoke", admin_only(sessions_revoke), methods=["POST"]),
        Route("/v1/admin/acl", admin_only(acl_list)),
        Route("/v1/admin/acl/block", admin_only(acl_block), methods=["POST"]),
        Route("/v1/admin/acl/unblock", admin_only(acl_unblock), methods=["POST"]),
        Route("/v1/admin/plugins", admin_only(plugins_list)),
        Route("/v1/admin/plugins/{name}/{verb}", admin_only(plugin_state), methods=["POST"]),
        Route("/v1/admin/emergency-shutdown", admin_only(emergency_shutdown), methods=["POST"]),
        Route("/v1/admin/recover", admin_only(recover), methods=["POST"]),
        *(incident_routes(actions.incidents, admin_only) if actions.incidents else []),
    ]
