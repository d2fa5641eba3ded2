"""/v1/plugins: registration by plugins, and calls to plugins (REQ-SVC-2, REQ-SVC-21).

POST /v1/plugins/register     a plugin's client certificate asks to be registered; the
                              five steps run (the core calls the plugin back for step 3);
                              on completion the plugin gets a session and tokens
POST /v1/plugins/{name}/call  {"op", "args"} with a bearer token: the secure communication
                              flow. Steps 1-5 (session, security, intrusion, rate limit,
                              trust) are the identity and policy middleware and the
                              session check here; then the authorization policy
                              ([[plugins.access]], default deny: 403 and an audit record
                              for a principal it does not allow to call this operation of
                              this plugin); 6-8 the sealed call (PluginCaller); 9-10 the
                              communication record and the trust update.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from securecore.plugin_registry.access import AccessPolicy
from securecore.plugin_registry.channel_client import PluginCaller, PluginCallError, StepObserver
from securecore.plugin_registry.registry import PluginRegistry, RegistrationRequest
from securecore.server.api_schema import Endpoint, body, integer, read_body, string
from securecore.server.errors import error_response
from securecore.server.identity_middleware import relayed_by
from securecore.server.session_routes import bearer, token_pair_json
from securecore.sessions.manager import SessionManager
from securecore.sessions.tokens import TokenError

REGISTER = body(
    {
        "name": string(63, description="the plugin's name, as in its certificate"),
        "vendor": string(64),
        "endpoint": string(256, description="https://HOST:PORT", pattern="^https://[^/?#]+/?$"),
        "security_level": integer(1, 5),
    }
)
CALL = body({"op": string(128)}, {"args": {"type": "object"}})
ENDPOINTS = [
    Endpoint(
        "POST",
        "/v1/plugins/register",
        "Register the calling plugin (five steps)",
        REGISTER,
        (201, 422),
        ("plugins",),
    ),
    Endpoint(
        "POST",
        "/v1/plugins/{name}/call",
        "Call a plugin through the secure flow",
        CALL,
        (200, 403, 409, 502),
        ("plugins",),
    ),
]

# What a bad answer means for the plugin's trust: a broken seal is a security
# violation; no answer (or a refusal) a failure; an application-level error
# in a good seal is a successful communication.
VIOLATIONS = frozenset(
    {
        "bad_signature",
        "replayed",
        "stale",
        "unexpected_reply",
        "misdirected",
        "undecryptable",
        "unknown_key",
        "malformed",
    }
)


def call_path_plugin(path: str) -> str | None:
    """The plugin named by /v1/plugins/NAME/call (for the policy engine's trust stage)."""
    parts = path.strip("/").split("/")
    if len(parts) == 4 and parts[:2] == ["v1", "plugins"] and parts[3] == "call":
        return parts[2]
    return None


def establish_channel(
    caller: PluginCaller,
    registry: PluginRegistry,
    audit: Callable[..., Any],
    actor: str,
    name: str,
    endpoint: str,
) -> Any:
    """A channel of this host's own to plugin NAME, kept for its next calls; audited
    under ACTOR, whose call needed it. PluginCallError if the plugin refuses it or
    does not answer through it."""
    try:
        channel = caller.establish(name, endpoint)["channel"]
    except PluginCallError as error:
        details = {"holder": registry.holder, "detail": str(error)}
        audit(actor, "plugin.channel", name, "failure", details)
        raise
    registry.keep_channel(name, channel)
    details = {"holder": registry.holder, "kid": channel.kid, "core_kid": channel.core_kid}
    audit(actor, "plugin.channel", name, "success", details)
    return channel


def plugin_routes(
    registry: PluginRegistry,
    caller: PluginCaller,
    sessions: SessionManager,
    audit: Callable[..., Any],
    observe: StepObserver = lambda step, outcome, seconds: None,
    access: AccessPolicy | None = None,
) -> list[Route]:
    """OBSERVE(step, outcome, seconds) hears every step of a call (ServiceMetrics);
    ACCESS says who may call what (None: nobody)."""
    access = access or AccessPolicy()

    async def register(request: Request) -> Response:
        data, invalid = await read_body(request, REGISTER)
        if invalid:
            return invalid
        principal = request.state.principal
        wanted = RegistrationRequest(
            data["name"], data["vendor"], data["endpoint"], data["security_level"]
        )
        done = await anyio.to_thread.run_sync(registry.register, wanted, principal)
        answer: dict[str, Any] = {
            "name": done.name,
            "state": done.state,
            "score": done.score,
            "steps": done.steps,
            "alerts": done.alerts,
        }
        if done.state == "pending":
            failed = done.steps[-1]
            message = f"{failed['step']}: {failed['detail']}"
            error = {"code": "registration_failed", "message": message}
            return JSONResponse({**answer, "error": error}, status_code=422)
        if done.state != "active":  # registered again while suspended: no session
            return JSONResponse(answer, status_code=201)
        # Step 5: the plugin's own session, for its calls to the core.
        await anyio.to_thread.run_sync(
            sessions.note_certificate, principal.thumbprint, principal.serial
        )  # a CRL naming this certificate finds the session
        pair = await anyio.to_thread.run_sync(sessions.create, principal.id, principal.thumbprint)
        answer["session"] = token_pair_json(pair)
        return JSONResponse(answer, status_code=201)

    async def call(request: Request) -> Response:
        name = request.path_params["name"]
        principal = request.state.principal
        token = bearer(request)
        checked = time.perf_counter()
        try:
            if token is None:
                raise TokenError("unauthenticated", "an Authorization: Bearer token is required")
            sessions.verify(token, principal.thumbprint)  # step 1
        except TokenError as error:
            observe("session", error.code, time.perf_counter() - checked)
            return error_response(401, str(error), error.code)
        observe("session", "success", time.perf_counter() - checked)
        data, invalid = await read_body(request, CALL)
        if invalid:
            return invalid
        relayed = relayed_by(request.scope)  # the DMZ edge's name, if one relayed the call
        # Before the registry is asked: a caller not allowed learns nothing about the plugin.
        rule = access.decide(principal.id, name, data["op"])
        if rule is None:
            await anyio.to_thread.run_sync(
                audit,
                principal.id,
                "plugin.authorize",
                name,
                "denied",
                {"op": data["op"], "reason": "no access rule allows it", **relayed},
            )
            return error_response(
                403, f"{principal.id} may not call {data['op']} of plugin {name}", "forbidden"
            )
        try:
            _, endpoint, _, channel = registry.channel(name)
        except KeyError:
            return error_response(404, f"no plugin {name!r} is registered", "unknown_plugin")
        if channel is None and not registry.holder:
            return error_response(409, f"{name} has no secure channel", "no_channel")
        started = time.perf_counter()
        try:
            if channel is None:
                # This host's first call: a channel of its own, its key wrapped by its
                # own HSM key (the registering host's is of no use here), checked as at
                # registration: the plugin's certificate, then a sealed ping.
                channel = await anyio.to_thread.run_sync(
                    establish_channel, caller, registry, audit, principal.id, name, endpoint
                )
            result = await anyio.to_thread.run_sync(
                caller.call,
                name,
                endpoint,
                channel,
                data["op"],
                data.get("args") or {},
                principal.id,
                observe,
            )
            outcome, code, detail = "success", None, ""
        except PluginCallError as error:
            result = None
            code, detail = error.code, str(error)
            outcome = (
                "success"
                if code == "plugin_error"
                else "violation"
                if code in VIOLATIONS
                else "failure"
            )
        latency = round((time.perf_counter() - started) * 1000, 1)
        recorded = time.perf_counter()
        assessment = await anyio.to_thread.run_sync(
            registry.record_call, name, outcome, latency, code or ""
        )  # steps 9 and 10
        suspended = "suspend" in assessment.actions
        observe("record", "suspended" if suspended else "success", time.perf_counter() - recorded)
        await anyio.to_thread.run_sync(
            audit,
            principal.id,
            "plugin.call",
            name,
            "success" if code is None else "failure",
            {
                "op": data["op"],
                "outcome": outcome,
                "code": code,
                "ms": latency,
                "trust": assessment.score,
                "access_rule": rule,
                **relayed,
            },
        )
        if code == "plugin_error":
            return error_response(422, detail, "plugin_error")
        if code is not None:
            return error_response(502, detail, code)
        return JSONResponse({"plugin": name, "op": data["op"], "result": result})

    return [
        Route("/v1/plugins/register", register, methods=["POST"]),
        Route("/v1/plugins/{name}/call", call, methods=["POST"]),
    ]
