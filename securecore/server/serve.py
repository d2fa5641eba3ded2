"""`securecore serve -c CONFIG`: the service on uvicorn, mutual TLS 1.3 only."""

from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path

import uvicorn

from securecore import config as configuration
from securecore.audit.factory import open_audit_log, open_store
from securecore.config import ConfigError
from securecore.emergency import write_emergency_snapshot
from securecore.keys.factory import open_key_ring
from securecore.monitoring.metrics import ServiceMetrics
from securecore.plugins.probe import mtls_probe
from securecore.plugins.registry import PluginRegistry
from securecore.policy.engine import Policy, PolicyEngine
from securecore.policy.intrusion import IntrusionDetector
from securecore.policy.state import PolicyState
from securecore.server.admin_routes import AdminActions
from securecore.server.app import create_app
from securecore.server.intrusion_hooks import IntrusionResponder
from securecore.server.live_metrics import live_state
from securecore.server.logs import log_config
from securecore.server.tls_scope import TLSScopeHttpToolsProtocol
from securecore.sessions.manager import SessionManager
from securecore.tls import TLSPolicy

GRACEFUL_SHUTDOWN_SECONDS = 10


def load_policy(config: configuration.Config) -> Policy:
    path = config.get("policy", "file")
    if not path:
        return Policy()
    try:
        return Policy.from_mapping(tomllib.loads(Path(path).read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as error:
        raise ConfigError(f"{path} ([policy] file of {config.path}): {error}") from error


def build_server(config: configuration.Config) -> uvicorn.Server:
    policy_path = config.get("tls", "policy")
    if not policy_path:
        raise ConfigError(f"{config.path}: [tls] policy is required to serve")
    policy = TLSPolicy.from_file(policy_path)
    policy.server_context()  # certificate, key, CA and CRL load now, or nothing starts
    ring = open_key_ring(config)
    host, _, port = config.get("service", "listen").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{config.path}: [service] listen must be HOST:PORT")

    def audit_store() -> None:
        open_store(config).close()

    def signing_key() -> None:
        ring.current(ring.signing_key)

    data_dir = Path(config.get("service", "data_dir"))
    sessions = SessionManager(ring, data_dir / "sessions.db")
    audit = open_audit_log(config, ring)
    metrics = ServiceMetrics()

    def audit_decision(actor, action, target, outcome, details):
        # A policy decision is counted for /metrics, then made durable.
        metrics.decisions.labels(action.removeprefix("policy."), outcome).inc()
        return audit.append(actor, action, target, outcome, details)

    async def audit_decision_async(actor, action, target, outcome, details):
        metrics.decisions.labels(action.removeprefix("policy."), outcome).inc()
        return await audit.append_async(actor, action, target, outcome, details)

    policy_state = PolicyState(data_dir / "policy.db")
    engine = PolicyEngine(
        load_policy(config), policy_state, audit=audit_decision, audit_async=audit_decision_async
    )
    intrusion = IntrusionResponder(IntrusionDetector(policy_state), sessions, audit.append)
    registry = PluginRegistry(
        data_dir / "plugins.db",
        vendors=config.get("plugins", "vendors") or {},
        minimum_security_level=config.get("plugins", "minimum_security_level"),
        probe=mtls_probe(policy),
        audit=audit.append,
    )

    def status() -> dict:
        return {
            "modes": {"shutdown": policy_state.mode("shutdown", "off"),
                      "emergency": policy_state.mode("emergency", "off")},
            "audit": {"records": audit.size, "uncheckpointed": audit.uncheckpointed},
            "plugins": registry.summary(),
            "active_blocks": len(policy_state.active_blocks(time.time())),
            "sessions": len(sessions.list_live()),
        }  # fmt: skip

    admin = AdminActions(
        audit=audit.append,
        sessions=sessions,
        policy_state=policy_state,
        registry=registry,
        snapshot=lambda **why: write_emergency_snapshot(config, ring, audit, **why),
        status=status,
    )
    metrics.add_collector(live_state(data_dir, audit, policy))
    app = create_app(
        trust_domain="securecore",
        readiness={"audit_store": audit_store, "signing_key": signing_key},
        sessions=sessions,
        policy=engine,
        metrics=metrics,
        admin=admin,
        intrusion=intrusion,
        on_shutdown=audit.close,  # writes what is queued and a final signed checkpoint
    )
    settings = uvicorn.Config(
        app,
        host=host.strip("[]"),
        port=int(port),
        http=TLSScopeHttpToolsProtocol,
        loop="uvloop",
        ssl_context_factory=lambda _config, _default: policy.server_context(),
        log_config=log_config(),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
        proxy_headers=False,  # no header may change who the client is
    )
    return uvicorn.Server(settings)


def serve(args: argparse.Namespace) -> int:
    server = build_server(configuration.load(args.config))
    server.run()
    return 0


def add_parser(commands) -> None:
    command = commands.add_parser(
        "serve", help="run the core service (mutual TLS 1.3)", description=__doc__
    )
    command.add_argument("-c", "--config", help="configuration file (or SECURECORE_CONFIG)")
    command.set_defaults(handler=serve)
