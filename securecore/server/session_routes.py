"""/v1/sessions: tokens for the principal of the client certificate.

Through the DMZ edge, that is the client certificate the edge relays: the
tokens are bound to it (cnf x5t#S256), not to the edge's.

POST   /v1/sessions          a new session (access + refresh token), bound to the certificate
POST   /v1/sessions/refresh  {"refresh_token": ...} -> a new pair; the old refresh token retires
DELETE /v1/sessions/current  revoke the session of the presented access token
GET    /v1/sessions/current  the presented access token's session (a check for clients)
"""

from __future__ import annotations

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from securecore.server.api_schema import Endpoint, body, read_body, string
from securecore.server.errors import error_response
from securecore.server.identity_middleware import relayed_by, request_source
from securecore.server.intrusion_hooks import IntrusionResponder
from securecore.sessions.manager import SessionManager, TokenPair
from securecore.sessions.tokens import TokenError

REFRESH = body({"refresh_token": string(128, description="the refresh token to exchange")})
ENDPOINTS = [
    Endpoint(
        "POST",
        "/v1/sessions",
        "A session for the certificate's principal",
        None,
        (201,),
        ("sessions",),
    ),
    Endpoint(
        "POST",
        "/v1/sessions/refresh",
        "Exchange a refresh token for a new pair",
        REFRESH,
        (200,),
        ("sessions",),
    ),
    Endpoint(
        "GET",
        "/v1/sessions/current",
        "The presented access token's session",
        None,
        (200,),
        ("sessions",),
    ),
    Endpoint(
        "DELETE",
        "/v1/sessions/current",
        "End the presented access token's session",
        None,
        (204,),
        ("sessions",),
    ),
]


def token_pair_json(pair: TokenPair) -> dict:
    return {
        "access_token": pair.access_token,
        "refresh_token": pair.refresh_token,
        "token_type": "Bearer",
        "expires_in": pair.expires_in,
        "session_id": pair.session_id,
    }


def _refused(error: TokenError) -> JSONResponse:
    status = {"too_many_sessions": 429, "principal_blocked": 403}.get(error.code, 401)
    return error_response(status, str(error), error.code)


def bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


# Refusals that mean someone presented a credential that is not good: they count
# as failed logins for intrusion detection. (Limits and expiry do not.)
FAILED_AUTHENTICATION = frozenset(
    {
        "malformed",
        "alg_not_allowed",
        "unknown_kid",
        "bad_signature",
        "wrong_issuer",
        "wrong_audience",
        "invalid_refresh",
        "refresh_reuse",
        "binding_mismatch",
    }
)


def session_routes(
    sessions: SessionManager, intrusion: IntrusionResponder | None = None
) -> list[Route]:
    async def refused(request: Request, error: TokenError) -> JSONResponse:
        if intrusion is not None and error.code in FAILED_AUTHENTICATION:
            await anyio.to_thread.run_sync(
                intrusion.authentication_failed,
                request.state.principal.id,
                request_source(request.scope),
                error.code,
                relayed_by(request.scope).get("via"),
            )
        return _refused(error)

    async def create(request: Request) -> Response:
        principal = request.state.principal

        def issue() -> TokenPair:
            # Noted first: a CRL naming this certificate finds the session.
            sessions.note_certificate(principal.thumbprint, principal.serial)
            return sessions.create(principal.id, principal.thumbprint)

        try:
            # Issuing commits durably (an fsync): off the event loop.
            pair = await anyio.to_thread.run_sync(issue)
        except TokenError as error:
            return await refused(request, error)
        return JSONResponse(token_pair_json(pair), status_code=201)

    async def refresh(request: Request) -> Response:
        data, invalid = await read_body(request, REFRESH)
        if invalid:
            return invalid
        token = data["refresh_token"]
        try:
            pair = await anyio.to_thread.run_sync(
                sessions.refresh, token, request.state.principal.thumbprint
            )
        except TokenError as error:
            return await refused(request, error)
        return JSONResponse(token_pair_json(pair))

    def current_claims(request: Request) -> dict:
        token = bearer(request)
        if token is None:
            raise TokenError("unauthenticated", "an Authorization: Bearer token is required")
        return sessions.verify(token, request.state.principal.thumbprint)

    async def current(request: Request) -> Response:
        try:
            claims = current_claims(request)
        except TokenError as error:
            return await refused(request, error)
        return JSONResponse(
            {"session_id": claims["sid"], "sub": claims["sub"], "exp": claims["exp"]}
        )

    async def end(request: Request) -> Response:
        try:
            claims = current_claims(request)
        except TokenError as error:
            return await refused(request, error)
        await anyio.to_thread.run_sync(sessions.revoke, claims["sid"], "ended by its holder")
        return Response(status_code=204)

    return [
        Route("/v1/sessions", create, methods=["POST"]),
        Route("/v1/sessions/refresh", refresh, methods=["POST"]),
        Route("/v1/sessions/current", current, methods=["GET"]),
        Route("/v1/sessions/current", end, methods=["DELETE"]),
    ]
