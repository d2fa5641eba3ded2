"""The local admin socket: the operators' path that no automatic response can close.

Automatic responses block addresses and principals, and an operator may block
an address or lock a principal by mistake; then the admin API over mutual TLS
may refuse the very administrators who would clear the block. So the service
also serves the /v1/admin routes on a Unix socket in its data directory
(`DATA_DIR/admin.sock`, mode 0600 in a 0700 directory, as Envoy's admin
interface or Docker's socket): plain HTTP, reachable only on the host, by root
and the service user. The kernel names the caller (SO_PEERCRED); any other
user is refused even if the socket's mode were changed. No policy stage
(ACL, blocks, rate limits, emergency shutdown) applies there, and the
privilege-escalation response cannot either (there is no principal to
lock), so `securecore acl list|unblock --local` and `recover --local` work
whatever was blocked. Every change made there is audited like any other,
with actor `operator:NAME@local/USER` (NAME from --by, USER from the kernel).

With several workers the supervisor binds the socket and every worker
accepts on it, as on the TCP socket.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import struct
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from securecore.config import ConfigError
from securecore.server.admin_routes import OPERATOR_NAME, AdminActions, admin_routes
from securecore.server.errors import http_exception, unhandled

SOCKET_NAME = "admin.sock"
PEER_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def socket_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / SOCKET_NAME


def bind(path: Path) -> socket.socket:
    """A listening Unix socket at PATH, 0600 from its creation on."""
    if path.exists() or path.is_symlink():
        if not path.is_socket():
            raise ConfigError(f"{path}: exists and is not a socket; remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left by a service that ended without removing it
        else:
            raise ConfigError(f"{path}: another service is serving this admin socket")
        finally:
            probe.close()
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        listening.bind(str(path))
    except OSError as error:  # e.g. a path longer than a Unix socket's 107 bytes
        listening.close()
        raise ConfigError(f"{path}: cannot serve the local admin socket: {error}") from error
    finally:
        os.umask(previous)
    path.chmod(0o600)
    listening.listen(64)
    return listening


def local_actor(request: Request) -> str | None:
    """`operator:NAME@local/USER` for root or the service user; None for anyone else."""
    credentials = request.scope.get("extensions", {}).get("peer_credentials")
    if not credentials:
        return None
    uid = credentials["uid"]
    if uid not in (0, os.geteuid()):
        return None
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid{uid}"
    name = request.headers.get("x-operator", "")
    return f"operator:{name if OPERATOR_NAME.fullmatch(name) else user}@local/{user}"


class _WithPeer:
    __slots__ = ("app", "peer")

    def __init__(self, app: Any, peer: dict[str, int]) -> None:
        self.app, self.peer = app, peer

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["extensions"] = {**scope.get("extensions", {}), "peer_credentials": self.peer}
        await self.app(scope, receive, send)


class LocalAdminProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol that puts the kernel-verified caller into the scope."""

    # uvicorn's protocols take the Transport asyncio gives them (narrower than
    # BaseProtocol's BaseTransport), and say so with the same ignore.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        try:
            raw = transport.get_extra_info("socket").getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, PEER_CREDENTIALS.size
            )
        except (AttributeError, OSError):
            return  # no credentials: local_actor refuses the request
        pid, uid, gid = PEER_CREDENTIALS.unpack(raw)
        self.app = _WithPeer(self.app, {"pid": pid, "uid": uid, "gid": gid})


def local_admin_app(actions: AdminActions) -> Starlette:
    return Starlette(
        routes=admin_routes(actions, identify=local_actor),
        exception_handlers={HTTPException: http_exception, Exception: unhandled},
    )


class ServerWithLocalAdmin(uvicorn.Server):
    """The service's uvicorn server, also accepting on the local admin socket.

    Its connections share the server's state, so a graceful shutdown waits
    for them as for any other."""

    def __init__(
        self, config: uvicorn.Config, actions: AdminActions, listening: socket.socket
    ) -> None:
        super().__init__(config)
        self.local_config = uvicorn.Config(
            local_admin_app(actions),
            http=LocalAdminProtocol,
            lifespan="off",
            log_config=None,
            server_header=False,
            proxy_headers=False,
            access_log=config.access_log,
        )
        self.local_config.load()
        self.local_socket = listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit:
            return

        def protocol() -> asyncio.Protocol:
            return LocalAdminProtocol(
                config=self.local_config, server_state=self.server_state, app_state={}
            )

        server = await asyncio.get_running_loop().create_unix_server(
            protocol, sock=self.local_socket
        )
        self.servers.append(server)
