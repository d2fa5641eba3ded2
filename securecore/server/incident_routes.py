"""/v1/admin/incidents: the incident records (securecore.incidents), for administrators.

Served with the other admin routes, on mutual TLS and on the local admin
socket, behind the same guard; the store audits every change itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from securecore.incidents.model import (
    ACTION_PATTERN,
    HOST_PATTERN,
    ID_PATTERN,
    IMPACTS,
    PHASES,
    SEVERITIES,
    SHA256_PATTERN,
    SOURCES,
    VERIFICATION_METHODS,
    VERIFIED_STAGES,
    choice_pattern,
)
from securecore.incidents.store import IncidentError, IncidentStore
from securecore.server.api_schema import (
    Endpoint,
    body,
    boolean,
    integer,
    read_body,
    string,
    strings,
)
from securecore.server.errors import error_response
from securecore.server.identity_middleware import relayed_by

TEXT = 2000
OPEN = body(
    {
        "title": string(200),
        "severity": string(16, pattern=choice_pattern(SEVERITIES)),
        "impact": string(16, pattern=choice_pattern(IMPACTS)),
        "source": string(16, pattern=choice_pattern(SOURCES)),
    },
    {"summary": string(TEXT, 0)},
)
UPDATE = body(
    optional={
        "phase": string(16, pattern=choice_pattern(PHASES)),
        "severity": string(16, pattern=choice_pattern(SEVERITIES)),
        "impact": string(16, pattern=choice_pattern(IMPACTS)),
        "scope": string(TEXT),
        "cause": string(TEXT),
        "note": string(TEXT),
        "fix": string(TEXT),
        "follow_up": string(TEXT),
    }
)
# What an action produced or a verification rests on: a bundle (the SHA-256 of its
# manifest) or a backup archive (its own SHA-256).
ARTIFACT = {
    "artifact_name": string(200),
    "artifact_kind": string(32),
    "artifact_sha256": string(64, pattern=SHA256_PATTERN),
}
ACTION = body(
    {"action": string(32, pattern=ACTION_PATTERN)},
    {
        "hosts": strings(string(63, pattern=HOST_PATTERN), 256),
        "outcome": string(16, pattern=choice_pattern(("success", "failure", "unchanged"))),
        "summary": string(TEXT, 0),
        **ARTIFACT,
    },
)
METHODS = tuple(sorted({m for methods in VERIFICATION_METHODS.values() for m in methods}))
VERIFICATION = body(
    {
        "stage": string(16, pattern=choice_pattern(VERIFIED_STAGES)),
        "method": string(16, pattern=choice_pattern(METHODS)),
        "summary": string(TEXT),
        "passed": boolean(),
    },
    {**ARTIFACT, "checks_passed": integer(0, 100000), "checks_failed": integer(0, 100000)},
)
CLOSE = body({"summary": string(TEXT)})

_ONE = "/v1/admin/incidents/{incident}"
# The id in the path, so that a generated request can be told valid from not; the store
# names a wrong one in its refusal (422).
_ID = {"incident": string(20, pattern=ID_PATTERN)}


def _endpoint(
    method: str, path: str, summary: str, schema: dict | None, statuses: tuple[int, ...] = (200,)
) -> Endpoint:
    return Endpoint(method, path, summary, schema, statuses, ("admin",), path_parameters=_ID)


ENDPOINTS = [
    Endpoint("GET", "/v1/admin/incidents", "Incidents, newest first", None, (200,), ("admin",)),
    Endpoint("POST", "/v1/admin/incidents", "Open an incident", OPEN, (201,), ("admin",)),
    _endpoint("GET", _ONE, "An incident with its timeline", None),
    _endpoint("POST", f"{_ONE}/update", "Change an incident", UPDATE, (200, 409)),
    _endpoint("POST", f"{_ONE}/actions", "Record an action taken", ACTION, (200, 409)),
    _endpoint(
        "POST",
        f"{_ONE}/verifications",
        "Record a verification of eradication or recovery",
        VERIFICATION,
        (200, 409),
    ),
    _endpoint("POST", f"{_ONE}/close", "Close an incident", CLOSE, (200, 409)),
]

Guard = Callable[
    [Callable[[Request, str], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]
]


def incident_routes(store: IncidentStore, admin_only: Guard) -> list[Route]:
    async def answer(call: Callable[[], Any], status: int = 200) -> Response:
        try:
            return JSONResponse(await anyio.to_thread.run_sync(call), status_code=status)
        except IncidentError as refused:
            conflict = "conflict" if refused.status == 409 else None
            return error_response(refused.status, str(refused), conflict)

    def changed(
        schema: dict, change: Callable[[IncidentStore], Callable[[str, str, dict], Any]]
    ) -> Callable[[Request, str], Awaitable[Response]]:
        async def handler(request: Request, actor: str) -> Response:
            data, refused = await read_body(request, schema)
            if refused:
                return refused
            data.update(relayed_by(request.scope))  # an administrator through the edge
            incident = request.path_params["incident"]
            return await answer(lambda: change(store)(incident, actor, data))

        return handler

    async def listed(request: Request, actor: str) -> Response:
        return await answer(store.summaries)

    async def opened(request: Request, actor: str) -> Response:
        data, refused = await read_body(request, OPEN)
        if refused:
            return refused
        data.update(relayed_by(request.scope))
        return await answer(lambda: store.open(actor, data), 201)

    async def shown(request: Request, actor: str) -> Response:
        return await answer(lambda: store.get(request.path_params["incident"]))

    return [
        Route("/v1/admin/incidents", admin_only(listed), methods=["GET"]),
        Route("/v1/admin/incidents", admin_only(opened), methods=["POST"]),
        Route(_ONE, admin_only(shown), methods=["GET"]),
        Route(f"{_ONE}/update", admin_only(changed(UPDATE, lambda s: s.update)), methods=["POST"]),
        Route(
            f"{_ONE}/actions",
            admin_only(changed(ACTION, lambda s: s.record_action)),
            methods=["POST"],
        ),
        Route(
            f"{_ONE}/verifications",
            admin_only(changed(VERIFICATION, lambda s: s.record_verification)),
            methods=["POST"],
        ),
        Route(f"{_ONE}/close", admin_only(changed(CLOSE, lambda s: s.close)), methods=["POST"]),
    ]
