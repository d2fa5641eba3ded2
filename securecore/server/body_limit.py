"""Request body limits, per route, enforced while the body is read.

The outermost middleware of the service: before anything else runs, a
request whose Content-Length is over its route's limit is answered 413 and
its connection closed, without reading a byte of the body. A body without a
Content-Length (chunked) is counted as the application receives it: the
receive that would pass the limit raises instead, the request is answered
413 and the connection closed. uvicorn itself holds at most about 64 KiB of
a body that nobody receives (it stops reading the socket), so memory stays
bounded by the number of connections, whatever size the clients announce or
send. A response sent before a chunked body was read to its end also closes
the connection: uvicorn would otherwise read the rest, however long, to find
the next request.

Limits are set per route template ([limits] in the configuration), with a
small default for everything else: sessions and the admin API take a few
hundred bytes; a plugin call carries its arguments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from securecore.errors import SecureCoreError
from securecore.server.errors import error_response

DEFAULT_BODY_BYTES = 4096
DEFAULT_ROUTE_BODY_BYTES = {"/v1/plugins/{name}/call": 65536}


class BodyTooLargeError(SecureCoreError):
    """Raised from receive() when a body passes its route's limit."""


def template_pattern(template: str) -> re.Pattern[str]:
    """The route template /a/{b}/c as a pattern over request paths (one segment per name)."""
    parts = re.split(r"\{[^/{}]+\}", template)
    return re.compile("[^/]+".join(re.escape(part) for part in parts) + r"\Z")


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        default: int = DEFAULT_BODY_BYTES,
        routes: Mapping[str, int] | None = None,
    ) -> None:
        self.app, self.default = app, default
        self.routes = [
            (template_pattern(template), limit)
            for template, limit in {**DEFAULT_ROUTE_BODY_BYTES, **(routes or {})}.items()
        ]

    def limit_for(self, path: str) -> int:
        for pattern, limit in self.routes:
            if pattern.match(path):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        # httptools refuses repeated framing headers: one of each at most.
        length, chunked = b"0", False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True  # a body of unknown length (a declared length is bounded)
        try:
            declared = int(length)
        except ValueError:
            declared = limit + 1  # httptools refuses these first; never read one
        if declared > limit:
            await _refuse(scope, receive, send, limit)  # before any byte is read
            return
        state = {"received": 0, "ended": not chunked, "started": False}

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    raise BodyTooLargeError
                if not message.get("more_body", False):
                    state["ended"] = True
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                if not state["ended"]:
                    # Answered before a body of unknown length was read to its end.
                    headers = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except BodyTooLargeError:
            if state["started"]:
                raise  # uvicorn closes a connection whose application failed mid-answer
            await _refuse(scope, receive, send, limit)


async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    where = f"{scope['method']} {scope['path']}"
    response = error_response(413, f"{where}: the body is larger than {limit} bytes")
    response.headers["Connection"] = "close"  # the rest of the body is never read
    await response(scope, receive, send)
