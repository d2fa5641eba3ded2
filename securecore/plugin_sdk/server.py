"""A plugin server: mutual TLS, sealed calls from the core, sealed answers.

Routes (only the core principals the plugin is configured with - e.g.
spiffe://securecore/core/core-01 as core/core-01 - may call; any other
certificate, another core host's included, is refused with 403, so nobody
else can hand the plugin a channel key):
  PUT  /securecore/v1/channel  the channel key and the core's public signing
                               keys, sent by the core during registration (step 3)
  POST /securecore/v1/call     a sealed request {"op", "args", "caller"} -> a
                               sealed answer {"result"} or {"error": {code, message}}
  GET  /healthz                liveness, for the core's probe and monitoring
A request that does not verify (signature, freshness, replay, key) is
refused with 400 and a JSON error naming why; it is never handled.

SIGHUP reads the TLS certificate, key, CA and CRL again while serving (after
a rotation); channels set up before it keep answering with the key the core
pinned for them until the plugin registers again. The plugin also watches
those files and reloads them by itself within the TLS policy's
`watch_seconds` of a change: a core certificate revoked in the CRL on disk is
refused without any signal (and no session ticket lets it resume).
"""

from __future__ import annotations

import base64
import http.client
import inspect
import json
import logging
import os
import signal
import ssl
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from securecore.crypto.channel import (
    MessageError,
    Opened,
    ReplayGuard,
    Signer,
    certificate_kid,
    certificate_signer,
    open_message,
    public_keys_verifier,
    seal_message,
)
from securecore.errors import SecureCoreError
from securecore.server.identity import IdentityError, principal_from_scope
from securecore.server.logs import log_config
from securecore.server.tls_scope import TLSScopeHttpToolsProtocol
from securecore.tls import ReloadableServerContext, TLSFileWatcher, TLSPolicy, TLSPolicyError

CORE = "core"
PING = "securecore.ping"
KEPT_CHANNEL_KEYS = 2  # the newest and the one before, for calls in flight
log = logging.getLogger("securecore.plugin_sdk")

Handler = Callable[[dict[str, Any], str], Any]


class PluginError(SecureCoreError):
    """A handler's refusal: its code and message go back to the core, sealed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ChannelKeys:
    """The channel keys the core hosts handed over, kept 0600 in the plugin's state
    directory. Each core host sets up channels of its own (its HSM wraps its keys);
    a channel is verified with the public keys of the core host that set it up,
    and each host's newest KEPT_CHANNEL_KEYS channels are kept, so one host's
    channels never push out another's."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / "channel.json"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {"keys": {}, "order": [], "core_keys": {}}
        if self.path.exists():
            self._data = json.loads(self.path.read_text(encoding="utf-8"))

    def key(self, kid: str) -> bytes | None:
        encoded = self._data["keys"].get(kid)
        return base64.b64decode(encoded) if encoded else None

    @property
    def newest(self) -> str | None:
        return self._data["order"][-1] if self._data["order"] else None

    def core_keys(self, kid: str) -> dict[str, str]:
        """The public keys of the core host that set up channel KID ({} if none)."""
        by_channel = self._data.get("channel_core_keys")
        if by_channel is None:  # a file written before channels had owners
            return dict(self._data["core_keys"]) if kid in self._data["keys"] else {}
        return dict(by_channel.get(kid, {}))

    def signer_kid(self, kid: str) -> str | None:
        """Which of the plugin's certificates answers on channel KID (the one the
        core pinned when it set the channel up)."""
        return self._data.get("signers", {}).get(kid)

    def store(
        self, kid: str, key: bytes, core_keys: dict[str, str], signer_kid: str, owner: str
    ) -> None:
        """Keep channel KID, set up by the core principal OWNER with its public keys."""
        with self._lock:
            data = json.loads(json.dumps(self._data))
            by_channel = data.setdefault(
                "channel_core_keys", {k: data.get("core_keys", {}) for k in data["keys"]}
            )
            owners = data.setdefault("owners", {})
            data["keys"][kid] = base64.b64encode(key).decode()
            data.setdefault("signers", {})[kid] = signer_kid
            by_channel[kid], owners[kid] = core_keys, owner
            data["order"] = [k for k in data["order"] if k != kid] + [kid]
            mine = [k for k in data["order"] if owners.get(k, owner) == owner]
            for old in mine[:-KEPT_CHANNEL_KEYS]:
                data["order"].remove(old)
                for field in ("keys", "signers", "channel_core_keys", "owners"):
                    data[field].pop(old, None)
            data["core_keys"] = core_keys  # the newest, for readers of the older format
            temporary = self.path.with_suffix(".tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(self.path)
            self._data = data


def _refuse(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class PluginServer:
    def __init__(
        self,
        name: str,
        handlers: dict[str, Handler],
        *,
        tls_policy: str | Path,
        state_dir: str | Path,
        core_principals: Iterable[str],
        trust_domain: str = "securecore",
    ) -> None:
        self.name, self.handlers, self.trust_domain = name, dict(handlers), trust_domain
        # Who may hand over channel keys and make calls: named, never "any core".
        self.core_principals = frozenset(core_principals)
        malformed = sorted(p for p in self.core_principals if not p.startswith(f"{CORE}/"))
        if not self.core_principals or malformed:
            raise ValueError(
                f"core_principals: one or more core/HOST principals, not {malformed or 'none'}"
            )
        self.tls = ReloadableServerContext(tls_policy)
        # Answers are signed with the key of the certificate the core pinned for
        # the channel; after a reload the earlier key stays in memory for the
        # channels set up with it, until the plugin registers again.
        self.signers: dict[str, Signer] = {}
        self._use_certificate(self.tls.policy)
        self.channel = ChannelKeys(state_dir)
        self.guard = ReplayGuard()
        self.address = f"plugin/{name}"

    def _use_certificate(self, policy: TLSPolicy) -> None:
        if not (policy.server_certificate and policy.server_key):
            raise TLSPolicyError(
                f"{policy.source}: a plugin needs server_certificate and server_key"
            )
        certificate = Path(policy.server_certificate).read_text(encoding="utf-8")
        self.sign = certificate_signer(Path(policy.server_key).read_bytes(), certificate)
        self.signer_kid = certificate_kid(certificate)
        self.signers[self.signer_kid] = self.sign

    def reload(self, trigger: str = "reload signal") -> None:
        """SIGHUP or a TLS file changed: the certificate, key, CA and CRL read again;
        connections stay."""
        try:
            self._use_certificate(self.tls.reload())
        except (TLSPolicyError, OSError, ValueError) as error:
            log.error("TLS reload failed, the current certificate stays: %s", error)
            return
        log.info("TLS reloaded (%s): answering new channels as %s", trigger, self.signer_kid)

    # --- the ASGI application ---------------------------------------------------------

    def app(self) -> Starlette:
        async def healthz(request: Request) -> JSONResponse:
            return JSONResponse({"status": "ok", "plugin": self.name})

        async def channel(request: Request) -> Response:
            refused = self._core_only(request)
            if refused:
                return refused
            try:
                body = await request.json()
                kid, key = str(body["kid"]), base64.b64decode(body["key"], validate=True)
                core_keys = {str(k): str(v) for k, v in body["core_keys"].items()}
                if len(key) != 32 or not core_keys:
                    raise ValueError("a 256-bit key and the core's public keys are required")
                public_keys_verifier(core_keys)  # every key must load
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                return _refuse(400, "bad_channel", f"channel setup refused: {error}")
            owner = principal_from_scope(request.scope, self.trust_domain).id
            await anyio.to_thread.run_sync(
                self.channel.store, kid, key, core_keys, self.signer_kid, owner
            )
            log.info("channel key %s received from %s", kid, owner)
            return Response(status_code=204)

        async def call(request: Request) -> Response:
            refused = self._core_only(request)
            if refused:
                return refused
            try:
                message = await request.json()
                # Signed by the core host that set up the channel the message names.
                channel_kid = message.get("kid") if isinstance(message, dict) else None
                opened = open_message(
                    message,
                    keys=self.channel.key,
                    verify=public_keys_verifier(self.channel.core_keys(str(channel_kid))),
                    recipient=self.address,
                    guard=self.guard,
                )
            except MessageError as error:
                log.warning("refused a call: %s (%s)", error, error.code)
                return _refuse(400, error.code, str(error))
            except ValueError as error:
                return _refuse(400, "malformed", f"not JSON: {error}")
            answer = await self._dispatch(opened.payload)
            return JSONResponse(self.seal_answer(opened, answer))

        return Starlette(
            routes=[
                Route("/healthz", healthz),
                Route("/securecore/v1/channel", channel, methods=["PUT"]),
                Route("/securecore/v1/call", call, methods=["POST"]),
            ]
        )

    def seal_answer(self, request: Opened, answer: dict[str, Any]) -> Any:
        """The sealed answer to REQUEST: encrypted with its channel key, signed, bound
        to its id. (A test double overrides this to misbehave.)"""
        kid = request.header["kid"]
        sign = self.signers.get(self.channel.signer_kid(kid) or "", self.sign)
        return seal_message(
            self.channel.key(kid) or b"",
            kid,
            sender=self.address,
            recipient=request.header["from"],
            payload=answer,
            sign=sign,
            reply_to=request.header["id"],
        )

    def _core_only(self, request: Request) -> JSONResponse | None:
        try:
            principal = principal_from_scope(request.scope, self.trust_domain)
        except IdentityError as error:
            return _refuse(403, "identity_unknown", str(error))
        if principal.kind != CORE:
            return _refuse(403, "not_the_core", f"{principal.id} may not call a plugin")
        if principal.id not in self.core_principals:
            log.warning("refused %s %s: not a configured core", principal.id, request.url.path)
            return _refuse(
                403, "core_not_allowed", f"{principal.id} is not a core this plugin serves"
            )
        return None

    async def _dispatch(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict) or not isinstance(payload.get("op"), str):
            return {"error": {"code": "malformed", "message": "a call is {op, args, caller}"}}
        op, args = payload["op"], payload.get("args") or {}
        if op == PING:
            return {"result": {"challenge": args.get("challenge"), "plugin": self.name}}
        handler = self.handlers.get(op)
        if handler is None:
            return {"error": {"code": "unknown_op", "message": f"{self.name} has no {op!r}"}}
        caller = str(payload.get("caller", ""))
        try:
            if inspect.iscoroutinefunction(handler):
                result = await handler(args, caller)
            else:
                result = await anyio.to_thread.run_sync(handler, args, caller)
        except PluginError as error:
            return {"error": {"code": error.code, "message": str(error)}}
        return {"result": result}

    # --- running ------------------------------------------------------------------------

    def server(self, host: str, port: int) -> uvicorn.Server:
        settings = uvicorn.Config(
            self.app(),
            host=host,
            port=port,
            http=TLSScopeHttpToolsProtocol,
            loop="uvloop",
            ssl_context_factory=lambda _config, _default: self.tls.context,
            log_config=log_config(),
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=10,
        )
        return uvicorn.Server(settings)

    def watch(self) -> TLSFileWatcher:
        """Reload whenever a TLS file changes (and at once on reload_now())."""
        return TLSFileWatcher(
            self.tls.watched_files,
            self.reload,
            self.tls.policy.watch_seconds,
            loaded=self.tls.loaded,
        ).start()

    def run(self, host: str, port: int) -> None:
        watcher = self.watch()
        signal.signal(signal.SIGHUP, lambda _signum, _frame: watcher.reload_now())
        self.server(host, port).run()


def register_with_core(
    core_url: str,
    *,
    tls_policy: str | Path,
    name: str,
    vendor: str,
    endpoint: str,
    security_level: int,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Ask the core to register this plugin; returns the core's answer (steps, state, score).

    The core runs the five steps and calls back ENDPOINT (which must be
    serving) for the secure-communication test.
    """
    policy = TLSPolicy.from_file(tls_policy)
    url = urlsplit(core_url)
    if url.hostname is None:
        raise PluginError("unreachable", f"{core_url}: no host in the URL")
    connection = http.client.HTTPSConnection(
        url.hostname, url.port or 443, context=policy.client_context(), timeout=timeout
    )
    body = json.dumps(
        {"name": name, "vendor": vendor, "endpoint": endpoint, "security_level": security_level}
    )
    try:
        connection.request(
            "POST", "/v1/plugins/register", body=body, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        answer = json.loads(response.read() or b"{}")
    except (OSError, ssl.SSLError, http.client.HTTPException, ValueError) as error:
        raise PluginError("unreachable", f"{core_url}: {type(error).__name__}: {error}") from error
    finally:
        connection.close()
    if response.status not in (200, 201):
        failure = answer.get("error", {})
        message = f"{core_url} answered {response.status}: {failure.get('message')}"
        raise PluginError(failure.get("code", "refused"), message)
    return answer
