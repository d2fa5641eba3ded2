"""Operator commands: a client of the service's /v1/admin API over mutual TLS.

securecore plugins list | approve NAME | suspend NAME | revoke NAME [--reason TEXT]
securecore sessions list | revoke (SESSION_ID | --principal P) [--reason TEXT]
securecore acl list | block ADDRESS [--minutes N] | unblock (ADDRESS | --principal P)
securecore emergency-shutdown --reason TEXT     securecore recover --note TEXT
securecore status
The service makes every change itself: its audit log records it with the
administrator's certificate as the actor, and all its workers see it at once.
The client certificate comes from the TLS policy ([tls] policy of the
configuration, or --tls-policy); it must name an administrator, or be the service's own
(a local operator on the core host, named with --by, as the playbooks do).

With --local the command talks to the service's local admin socket instead
(DATA_DIR/admin.sock, as root or the service user on the service's host): no
certificate, no address, and no block or automatic response applies there,
so operators can always list and clear blocks and recover. The audit log
records the kernel-verified local user and the --by name.
"""

from __future__ import annotations

import argparse
import getpass
import http.client
import json
import os
import socket
import ssl
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from securecore import config as configuration
from securecore.errors import SecureCoreError
from securecore.server.local_admin import socket_path
from securecore.tls import TLSPolicy

T = TypeVar("T")


class AdminError(SecureCoreError):
    """The service refused or could not be reached; the message says why."""


def _target(args: argparse.Namespace) -> tuple[str, int, ssl.SSLContext]:
    config = configuration.load(args.config)
    policy_path = args.tls_policy or config.get("tls", "policy")
    if not policy_path:
        raise AdminError("no TLS policy: set [tls] policy or pass --tls-policy")
    context = TLSPolicy.from_file(policy_path).client_context()
    if args.url:
        url = urlsplit(args.url)
        return url.hostname or "", url.port or 443, context
    host, _, port = config.get("service", "listen").rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host.strip("[]")  # noqa: S104 - mapping, not binding
    return host, int(port), context


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the service's local admin socket."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


def _connection(args: argparse.Namespace) -> tuple[http.client.HTTPConnection, str]:
    """The connection to the service and how to name it in errors."""
    if args.local or args.socket:
        path = Path(
            args.socket or socket_path(configuration.load(args.config).get("service", "data_dir"))
        )
        return _UnixConnection(path, timeout=30), f"local admin socket {path}"
    host, port, context = _target(args)
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=30)
    return connection, f"https://{host}:{port}"


def _call(args: argparse.Namespace, method: str, path: str, body: dict | None = None) -> Any:
    connection, where = _connection(args)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        # Who is acting, when the command runs with the service's own certificate
        # (a local operator on the core host, e.g. from a playbook).
        headers["X-Operator"] = args.by or os.environ.get("SUDO_USER") or getpass.getuser()
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        data = json.loads(response.read() or b"null")
    except (OSError, ssl.SSLError, http.client.HTTPException) as error:
        raise AdminError(f"{where}: {type(error).__name__}: {error}") from error
    finally:
        connection.close()
    if response.status >= 400:
        problem = (data or {}).get("error", {})
        raise AdminError(f"{response.status} {problem.get('code')}: {problem.get('message')}")
    return data


def _show(value: Any) -> int:
    print(json.dumps(value, indent=2))
    return 0


def _need(value: T, what: str) -> T:
    if not value:
        raise AdminError(f"{what} is required")
    return value


def _plugins(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _show(_call(args, "GET", "/v1/admin/plugins"))
    name = quote(_need(args.name, "NAME"), safe="")
    return _show(
        _call(args, "POST", f"/v1/admin/plugins/{name}/{args.action}", {"reason": args.reason})
    )


def _sessions(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _show(_call(args, "GET", "/v1/admin/sessions"))
    body = {"reason": args.reason}
    if args.session_id:
        body["session_id"] = args.session_id
    if args.principal:
        body["principal"] = args.principal
    return _show(_call(args, "POST", "/v1/admin/sessions/revoke", body))


def _acl(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _show(_call(args, "GET", "/v1/admin/acl"))
    if args.action == "unblock" and args.principal:
        if args.address:
            raise AdminError("give ADDRESS or --principal, not both")
        return _show(_call(args, "POST", "/v1/admin/acl/unblock", {"principal": args.principal}))
    address = _need(args.address, "ADDRESS" if args.action == "block" else "ADDRESS or --principal")
    if args.action == "block":
        body = {"address": address, "minutes": args.minutes, "reason": args.reason}
        return _show(_call(args, "POST", "/v1/admin/acl/block", body))
    return _show(_call(args, "POST", "/v1/admin/acl/unblock", {"address": address}))


def _emergency_shutdown(args: argparse.Namespace) -> int:
    body = {"reason": _need(args.reason.strip(), "--reason")}
    return _show(_call(args, "POST", "/v1/admin/emergency-shutdown", body))


def _recover(args: argparse.Namespace) -> int:
    return _show(_call(args, "POST", "/v1/admin/recover", {"note": args.note}))


def _status(args: argparse.Namespace) -> int:
    return _show(_call(args, "GET", "/v1/admin/status"))


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="configuration file (or SECURECORE_CONFIG)")
    parser.add_argument("--url", help="the service, https://HOST:PORT (default: [service] listen)")
    parser.add_argument(
        "--by", help="your name, recorded with what a local operator does (default: $USER)"
    )
    parser.add_argument("--tls-policy", help="TLS policy with the administrator's certificate")
    parser.add_argument(
        "--local",
        action="store_true",
        help="use the service's local admin socket (root or the service user, on its host)",
    )
    parser.add_argument("--socket", help="the local admin socket (default DATA_DIR/admin.sock)")


def configure(name: str, command: argparse.ArgumentParser) -> None:
    if name == "plugins":
        command.add_argument("action", choices=["list", "approve", "suspend", "revoke"])
        command.add_argument("name", nargs="?")
        command.add_argument("--reason", default="")
        command.set_defaults(handler=_plugins)
    elif name == "sessions":
        command.add_argument("action", choices=["list", "revoke"])
        command.add_argument("session_id", nargs="?")
        command.add_argument("--principal")
        command.add_argument("--reason", default="")
        command.set_defaults(handler=_sessions)
    elif name == "acl":
        command.add_argument("action", choices=["list", "block", "unblock"])
        command.add_argument("address", nargs="?")
        command.add_argument(
            "--principal", help="unblock this principal (KIND/NAME): locks and stops"
        )
        command.add_argument("--minutes", type=int, default=60)
        command.add_argument("--reason", default="")
        command.set_defaults(handler=_acl)
    elif name == "emergency-shutdown":
        command.add_argument("--reason", required=True)
        command.set_defaults(handler=_emergency_shutdown)
    elif name == "recover":
        command.add_argument("--note", required=True, help="what was checked before recovering")
        command.set_defaults(handler=_recover)
    else:  # status
        command.set_defaults(handler=_status)
    _connection_options(command)
