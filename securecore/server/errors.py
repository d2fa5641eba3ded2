"""Every error is JSON with a stable code: {"error": {"code": ..., "message": ...}}."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from securecore.audit.log import AuditError
from securecore.storage.state_db import StateOutcomeUnknownError, StateUnavailableError

CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def error_response(status: int, message: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code or CODES.get(status, "error"), "message": message}},
        status_code=status,
    )


async def http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)  # noqa: S101 - Starlette routes only these here
    return error_response(exc.status_code, exc.detail or CODES.get(exc.status_code, "error"))


async def unhandled(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, AuditError):
        # Fail closed: what cannot be recorded is not done (nor answered as done).
        return error_response(503, "the audit log cannot record this request", "audit_unavailable")
    if isinstance(exc, StateOutcomeUnknownError):
        # Cut off with the connection: it may have been done. No Retry-After - a
        # client should look before it does it again.
        return error_response(503, "the outcome of this request is unknown", "outcome_unknown")
    if isinstance(exc, StateUnavailableError):
        # A failover longer than the state database's reconnection wait: try again.
        response = error_response(503, "the service's state is unavailable", "state_unavailable")
        response.headers["Retry-After"] = "5"
        return response
    # The details stay in the server's log; the client learns nothing internal.
    return error_response(500, "internal error")
