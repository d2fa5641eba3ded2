"""The identity middleware: the verified client certificate becomes the request's Principal.

A request whose certificate names no principal is refused (403), except on the
open paths (health and readiness), which answer any verified client.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from securecore.server.errors import error_response
from securecore.server.identity import IdentityError, principal_from_scope

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class IdentityMiddleware:
    def __init__(self, app: ASGIApp, trust_domain: str) -> None:
        self.app, self.trust_domain = app, trust_domain

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
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
