"""The ASGI TLS extension for uvicorn: the verified client certificate in the scope.

uvicorn does not put the peer certificate into the ASGI scope. This protocol
class adds `scope["extensions"]["tls"]` (ASGI TLS extension, asgiref
specs/tls) for every request on a TLS connection, taken from the connection's
SSL object after the handshake verified the chain against the site's CA. The
application reads identity from there: a client cannot forge it with a
header, since no header of a client's is consulted (a configured DMZ edge's
relayed certificate is, and is checked like a handshake's: forwarded.py).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from securecore.server.logs import AccessLogger
from securecore.tls import LIVE_CONNECTIONS

# IANA TLS versions and TLS 1.3 cipher suites, as the extension wants numbers.
TLS_VERSIONS = {"TLSv1.3": 0x0304, "TLSv1.2": 0x0303}
CIPHER_SUITES = {
    "TLS_AES_128_GCM_SHA256": 0x1301,
    "TLS_AES_256_GCM_SHA384": 0x1302,
    "TLS_CHACHA20_POLY1305_SHA256": 0x1303,
}


def tls_extension(transport: Any) -> dict[str, Any] | None:
    ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        # A chain that fails verification never completes the handshake.
        "client_cert_error": None,
        "tls_version": TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": CIPHER_SUITES.get(cipher[0]) if cipher else None,
    }


class _WithTLS:
    __slots__ = ("app", "tls")

    def __init__(self, app: Any, tls: dict[str, Any]) -> None:
        self.app, self.tls = app, tls

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["extensions"] = {**scope.get("extensions", {}), "tls": dict(self.tls)}
        await self.app(scope, receive, send)


class _TLSScope:
    """Mixed into a uvicorn HTTP protocol (one instance per connection). Each
    connection is known to LIVE_CONNECTIONS while open, so that a CRL that
    revokes its certificate later ends it. Its access lines go to the access
    log's thread without a LogRecord each (logs.AccessLogger)."""

    app: Any
    transport: Any
    access_logger: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self.access_logger = AccessLogger.for_uvicorn(self.access_logger)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = _WithTLS(self.app, tls)
            ssl_object = transport.get_extra_info("ssl_object")
            LIVE_CONNECTIONS.add(transport, ssl_object.getpeercert(binary_form=True))

    def connection_lost(self, exc: Exception | None) -> None:
        LIVE_CONNECTIONS.discard(self.transport)
        super().connection_lost(exc)  # type: ignore[misc]


class TLSScopeH11Protocol(_TLSScope, H11Protocol):
    """uvicorn's pure-Python h11 protocol with the TLS extension."""


class TLSScopeHttpToolsProtocol(_TLSScope, HttpToolsProtocol):
    """uvicorn's httptools (llhttp) protocol with the TLS extension: the one served."""
