"""The ASGI application of the core service (Starlette).

Every connection is mutual TLS 1.3 (the server refuses anything else); the
identity middleware turns the verified client certificate into a Principal
for each request and refuses requests whose certificate names none (from a
DMZ edge, the client certificate it relays, checked: forwarded.py). Health
(/healthz) and readiness (/readyz) answer any verified client; readiness
answers 503 while a dependency fails, the audit log writer included.
Request bodies are limited per route while they are read (body_limit).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from securecore.monitoring.metrics import CONTENT_TYPE, MetricsMiddleware, ServiceMetrics
from securecore.policy.engine import PolicyEngine
from securecore.server.admin_routes import AdminActions, admin_routes
from securecore.server.api_schema import Endpoint, openapi
from securecore.server.body_limit import DEFAULT_BODY_BYTES, BodyLimitMiddleware
from securecore.server.errors import http_exception, unhandled
from securecore.server.forwarded import EdgeTrust
from securecore.server.identity_middleware import IdentityMiddleware
from securecore.server.intrusion_hooks import IntrusionResponder
from securecore.server.logs import flush_access_log
from securecore.server.policy_middleware import PolicyMiddleware
from securecore.server.session_routes import session_routes
from securecore.sessions.manager import SessionManager

log = logging.getLogger(__name__)


def _lifespan(
    on_shutdown: Callable[[], None] | None,
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            on_shutdown()
        flush_access_log()  # every request is answered by now

    return lifespan


def create_app(
    *,
    trust_domain: str,
    readiness: dict[str, Callable[[], None]] | None = None,
    sessions: SessionManager | None = None,
    policy: PolicyEngine | None = None,
    metrics: ServiceMetrics | None = None,
    admin: AdminActions | None = None,
    intrusion: IntrusionResponder | None = None,
    plugins: list[Route] | None = None,
    replication: list[Route] | None = None,
    plugin_view: Callable[[str], tuple[str, frozenset[str]] | None] | None = None,
    operators: AbstractSet[str] = frozenset(),
    on_shutdown: Callable[[], None] | None = None,
    body_bytes: int = DEFAULT_BODY_BYTES,
    route_body_bytes: Mapping[str, int] | None = None,
    edge: EdgeTrust | None = None,
) -> Starlette:
    checks = readiness or {}
    # What each check last said, so that a change is logged once (the answer names
    # only the kind of failure; the log says why, for the operator).
    last: dict[str, str] = {}

    def failing_checks() -> dict[str, str]:
        failed = {}
        for name, check in checks.items():
            try:
                check()
                said = ""
            except Exception as error:  # a failing dependency, reported by name
                failed[name] = type(error).__name__
                said = f"{type(error).__name__}: {error}"
            if last.get(name, "") != said:
                if said:
                    log.warning("not ready: %s: %s", name, said)
                else:
                    log.info("ready again: %s", name)
                last[name] = said
        return failed

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        # In a thread: a check may wait on a disk or on the supervisor's writer.
        failed = await anyio.to_thread.run_sync(failing_checks)
        if failed:
            return JSONResponse({"status": "unavailable", "failed": failed}, status_code=503)
        return JSONResponse({"status": "ready", "checks": sorted(checks)})

    async def whoami(request: Request) -> JSONResponse:
        via = request.state.via
        answer: dict[str, Any] = request.state.principal.as_dict()
        if via is not None:
            answer["via"] = via.as_dict()  # the DMZ edge that relayed the request
        return JSONResponse(answer)

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/v1/whoami", whoami),
            *(session_routes(sessions, intrusion) if sessions is not None else []),
            *([Route("/metrics", metrics_endpoint(metrics))] if metrics is not None else []),
            *(admin_routes(admin, intrusion) if admin is not None else []),
            *(plugins or []),
            *(replication or []),
            Route(
                "/openapi.json",
                openapi_endpoint(
                    sessions is not None,
                    admin is not None,
                    plugins is not None,
                    replication is not None,
                ),
            ),
        ],
        exception_handlers={HTTPException: http_exception, Exception: unhandled},
        lifespan=_lifespan(on_shutdown),
    )
    # Added last runs first: identity, then the policy engine, then the handler.
    if policy is not None:
        app.add_middleware(
            PolicyMiddleware,
            engine=policy,
            intrusion=intrusion,
            plugin_view=plugin_view,
            operators=operators,
        )
    app.add_middleware(IdentityMiddleware, trust_domain=trust_domain, edge=edge)
    # Before identity and policy: no body is read past its limit, whoever sends it.
    app.add_middleware(BodyLimitMiddleware, default=body_bytes, routes=route_body_bytes)
    if metrics is not None:
        app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: sees every answer
    return app


BASE_ENDPOINTS = [
    Endpoint("GET", "/healthz", "Liveness", None, (200,), ("service",)),
    Endpoint(
        "GET", "/readyz", "Readiness: audit store and signing key", None, (200, 503), ("service",)
    ),
    Endpoint(
        "GET",
        "/v1/whoami",
        "The principal of the client certificate (and the edge that relayed it)",
        None,
        (200,),
        ("service",),
    ),
    Endpoint("GET", "/metrics", "Prometheus metrics", None, (200,), ("service",)),
]


def openapi_endpoint(
    with_sessions: bool,
    with_admin: bool,
    with_plugins: bool = False,
    with_replication: bool = False,
) -> Callable[[Request], Awaitable[Response]]:
    from securecore import __version__
    from securecore.server import admin_routes as admin_module
    from securecore.server import plugin_routes as plugin_module
    from securecore.server import replication_routes as replication_module
    from securecore.server import session_routes as session_module

    endpoints = [
        *BASE_ENDPOINTS,
        *(session_module.ENDPOINTS if with_sessions else []),
        *(admin_module.ENDPOINTS if with_admin else []),
        *(plugin_module.ENDPOINTS if with_plugins else []),
        *(replication_module.ENDPOINTS if with_replication else []),
    ]
    document = openapi(endpoints, __version__)

    async def schema(request: Request) -> Response:
        return JSONResponse(document)

    return schema


def metrics_endpoint(metrics: ServiceMetrics) -> Callable[[Request], Awaitable[Response]]:
    async def scrape(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return scrape
