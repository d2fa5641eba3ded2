"""`securecore serve -c CONFIG`: the service on uvicorn, mutual TLS 1.3 only.

One worker (the default) runs everything in one process. With
`[service] workers = N` (or `--workers N`), a supervisor process opens the
audit log - it has exactly one writer - and serves it on a Unix socket
(securecore.audit.writer_service), binds the listening socket, and starts N
worker processes that share that socket; limits, blocks, sessions and the
registry are shared through the data directory. A worker that dies is
started again, and a supervisor that dies takes its workers with it (the
kernel's parent-death signal); SIGTERM stops the workers gracefully, then
writes the last audit records and a final signed checkpoint.

The admin routes are also served on the local admin socket DATA_DIR/admin.sock
(securecore.server.local_admin): the operators' path on the host that no
block or automatic response can close.

The service fails closed on its audit log: no request is answered without
its durable record. If the audit writer stops after an error (a disk that
fails, a database that cannot be written), every audited request answers
503, readiness answers 503 for a short drain, and the process (the
supervisor with all its workers) exits with status 1, so that systemd
(Restart=on-failure) starts it again; the log is recovered at start.

SIGHUP (`systemctl reload securecore`) reads the TLS policy's certificates,
keys, CA and CRL again without closing the listening socket or any
connection (securecore.tls.ReloadableServerContext); a supervisor passes it
on to its workers. Each worker also watches those files and reloads them by
itself within the policy's `watch_seconds` of a change (a new CRL applies
with no signal at all), and ends the open connections and the sessions of
the certificates the CRL revokes. HSM key versions need no reload: the key ring asks the token for
the newest version on every use.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import logging
import logging.config
import multiprocessing
import os
import signal
import socket
import threading
import time
import tomllib
from collections.abc import Callable
from multiprocessing import resource_tracker
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client.multiprocess import mark_process_dead

from securecore import config as configuration
from securecore.audit.factory import open_audit_log, open_store
from securecore.audit.log import AuditLog
from securecore.audit.witness import STATUS_FILE as WITNESS_STATUS_FILE
from securecore.audit.writer_service import AuditWriterServer, RemoteAuditLog
from securecore.config import ConfigError
from securecore.incidents.store import IncidentStore
from securecore.keys import signing_public_keys
from securecore.keys.factory import open_key_ring
from securecore.monitoring.metrics import MULTIPROCESS_DIR, ServiceMetrics
from securecore.operations.emergency import write_emergency_snapshot
from securecore.plugin_registry.access import AccessConfigError, AccessPolicy, EndpointPolicy
from securecore.plugin_registry.channel_client import PluginCaller, registration_probe
from securecore.plugin_registry.registry import PluginRegistry
from securecore.policy.check import policy_from_mapping
from securecore.policy.engine import Policy, PolicyEngine
from securecore.policy.intrusion import IntrusionDetector
from securecore.policy.state import PolicyState
from securecore.server.admin_routes import AdminActions
from securecore.server.app import create_app
from securecore.server.forwarded import EdgeTrust
from securecore.server.intrusion_hooks import IntrusionResponder
from securecore.server.live_metrics import live_state
from securecore.server.local_admin import ServerWithLocalAdmin
from securecore.server.local_admin import bind as bind_local_admin
from securecore.server.local_admin import socket_path as local_admin_path
from securecore.server.logs import log_config
from securecore.server.plugin_routes import plugin_routes
from securecore.server.replication_routes import replication_routes
from securecore.server.tls_scope import TLSScopeHttpToolsProtocol
from securecore.sessions.cluster import open_cluster_keys
from securecore.sessions.manager import SessionManager
from securecore.storage.state_db import PostgresState, open_state
from securecore.tls import ReloadableServerContext, TLSFileWatcher, TLSPolicy, TLSPolicyError

GRACEFUL_SHUTDOWN_SECONDS = 10
# After an audit writer failure: how long readiness answers 503 (and every
# audited request 503) before the listening socket closes, so that a load
# balancer polling /readyz moves clients away before connections are refused.
AUDIT_FAILURE_DRAIN_SECONDS = 2.0
AUDIT_FAILURE_EXIT = 1
log = logging.getLogger("securecore.serve")


def load_policy(config: configuration.Config) -> Policy:
    """The policy file's rules, its rate limits this host's share of them."""
    path = config.get("policy", "file")
    if not path:
        return Policy().shared_by(config.get("policy", "serving_hosts"))
    # TOML as written by hand, or JSON as roles/securecore writes the inventory's mapping.
    parse = json.loads if path.endswith(".json") else tomllib.loads
    try:
        policy = policy_from_mapping(parse(Path(path).read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, ValueError) as error:
        raise ConfigError(f"{path} ([policy] file of {config.path}): {error}") from error
    return policy.shared_by(config.get("policy", "serving_hosts"))


def tls_and_address(config: configuration.Config) -> tuple[TLSPolicy, str, int]:
    """The TLS policy (certificate, key, CA and CRL loaded now, or nothing starts)
    and the address to listen on."""
    policy_path = config.get("tls", "policy")
    if not policy_path:
        raise ConfigError(f"{config.path}: [tls] policy is required to serve")
    policy = TLSPolicy.from_file(policy_path)
    policy.server_context()
    host, _, port = config.get("service", "listen").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{config.path}: [service] listen must be HOST:PORT")
    return policy, host.strip("[]"), int(port)


def own_certificate_fingerprint(policy: TLSPolicy) -> str:
    """SHA-256 of the service's own client certificate (empty if it has none)."""
    if not policy.client_certificate:
        return ""
    return certificate_summary(policy.client_certificate)["sha256"]


def plugin_client_policy(config: configuration.Config, policy: TLSPolicy) -> TLSPolicy:
    """The TLS policy the service calls plugins with: its [plugins] client certificate,
    if one is set, in place of the policy's."""
    certificate = config.get("plugins", "client_certificate")
    key = config.get("plugins", "client_key")
    if bool(certificate) != bool(key):
        raise ConfigError(f"{config.path}: [plugins] client_certificate and client_key go together")
    if not certificate:
        return policy
    return dataclasses.replace(policy, client_certificate=Path(certificate), client_key=Path(key))


def plugin_access(config: configuration.Config) -> tuple[AccessPolicy, EndpointPolicy]:
    """Who may call which plugin, and where plugins may be ([plugins] of the configuration)."""
    try:
        return (
            AccessPolicy.from_rules(config.get("plugins", "access")),
            EndpointPolicy.from_config(
                config.get("plugins", "allowed_networks"), config.get("plugins", "allowed_ports")
            ),
        )
    except AccessConfigError as error:
        raise ConfigError(f"{config.path}: {error}") from error


def body_limits(config: configuration.Config) -> tuple[int, dict[str, int]]:
    """[limits]: the default body limit, and the limits of named route templates."""
    from securecore.server import admin_routes, plugin_routes, replication_routes, session_routes
    from securecore.server.app import BASE_ENDPOINTS

    known = {
        endpoint.path
        for module in (admin_routes, plugin_routes, replication_routes, session_routes)
        for endpoint in module.ENDPOINTS
    }
    known.update(endpoint.path for endpoint in BASE_ENDPOINTS)
    routes = config.get("limits", "route_body_bytes")
    for template, limit in routes.items():
        where = f"{config.path}: [limits] route_body_bytes {template!r}"
        if template not in known:
            raise ConfigError(f"{where}: no such route (known: {', '.join(sorted(known))})")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(f"{where}: a number of bytes (an integer >= 0), not {limit!r}")
    return config.get("limits", "body_bytes"), dict(routes)


def build_server(
    config: configuration.Config,
    audit: RemoteAuditLog | None = None,
    local_admin: socket.socket | None = None,
    audit_failed: threading.Event | None = None,
) -> uvicorn.Server:
    """The service; AUDIT is the supervisor's writer and LOCAL_ADMIN its admin
    socket when this is one of several workers (else this process binds it).

    With its own audit log, the server stops if the writer fails, and sets
    AUDIT_FAILED (the process then exits non-zero)."""
    policy, host, port = tls_and_address(config)
    body_bytes, route_body_bytes = body_limits(config)
    if local_admin is None:
        # First: a second service on this data directory stops here, before it
        # opens the audit log, and leaves the running one's socket alone.
        local_admin = bind_local_admin(local_admin_path(config.get("service", "data_dir")))
    tls = ReloadableServerContext(config.get("tls", "policy"))
    ring = open_key_ring(config)

    def audit_store() -> None:
        open_store(config).close()

    def signing_key() -> None:
        ring.current(ring.signing_key)

    data_dir = Path(config.get("service", "data_dir"))
    sessions_state = open_state(config, "sessions")
    sessions = SessionManager(
        ring, sessions_state, cluster=open_cluster_keys(config, ring, sessions_state)
    )
    audit_log: AuditLog | RemoteAuditLog
    own_log: AuditLog | None = None
    if audit is None:
        audit_log = own_log = open_audit_log(config, ring)
    else:
        audit_log = audit
    metrics = ServiceMetrics()
    # Every audit write the service waits for is timed (REQ-PERF-3).
    append = metrics.timed_audit(audit_log.append)
    append_async = metrics.timed_audit_async(audit_log.append_async)

    def audit_decision(
        actor: str, action: str, target: str, outcome: str, details: dict[str, Any] | None
    ) -> int:
        # A policy decision is counted for /metrics, then made durable.
        metrics.decisions.labels(action.removeprefix("policy."), outcome).inc()
        return append(actor, action, target, outcome, details)

    async def audit_decision_async(
        actor: str, action: str, target: str, outcome: str, details: dict[str, Any] | None
    ) -> int:
        metrics.decisions.labels(action.removeprefix("policy."), outcome).inc()
        return await append_async(actor, action, target, outcome, details)

    policy_state = PolicyState(open_state(config, "policy"), data_dir / "policy.counters")
    engine = PolicyEngine(
        load_policy(config), policy_state, audit=audit_decision, audit_async=audit_decision_async
    )
    intrusion = IntrusionResponder(
        IntrusionDetector(policy_state, serving_hosts=config.get("policy", "serving_hosts")),
        sessions,
        append,
        counted=lambda action: metrics.intrusion_responses.labels(action).inc(),
    )
    access, endpoints = plugin_access(config)
    caller = PluginCaller(plugin_client_policy(config, policy), ring, endpoints=endpoints)
    registry = PluginRegistry(
        open_state(config, "plugins"),
        vendors=config.get("plugins", "vendors") or {},
        minimum_security_level=config.get("plugins", "minimum_security_level"),
        probe=registration_probe(caller),
        audit=append,
        endpoints=endpoints,
        # A plugin suspended or revoked loses its sessions, and gets no new one.
        on_blocked=lambda name: sessions.revoke_where(
            principal=f"plugin/{name}", reason="plugin suspended or revoked"
        ),
        # Each host its own channels (its HSM wraps their keys), named by its key.
        holder=ring.signing_key,
    )
    sessions.refusal = registry.session_refusal

    def status() -> dict:
        return {
            "modes": {
                "shutdown": policy_state.mode("shutdown", "off"),
                "emergency": policy_state.mode("emergency", "off"),
            },
            "audit": {"records": audit_log.size, "uncheckpointed": audit_log.uncheckpointed},
            "plugins": registry.summary(),
            "active_blocks": len(policy_state.active_blocks(time.time())),
            "sessions": len(sessions.list_live()),
        }

    # A set changed in place on reload: the admin routes and the policy hold it.
    operators = {own_certificate_fingerprint(plugin_client_policy(config, policy))}
    incidents = IncidentStore(open_state(config, "incidents"), append)
    admin = AdminActions(
        operators=operators,
        incidents=incidents,
        audit=append,
        sessions=sessions,
        policy_state=policy_state,
        registry=registry,
        snapshot=lambda **why: write_emergency_snapshot(config, ring, audit_log, **why),
        status=status,
    )
    metrics.add_collector(
        live_state(
            registry,
            sessions,
            audit_log,
            policy,
            witness_status=Path(config.get("audit", "witness_dir")) / WITNESS_STATUS_FILE,
            # REQ-AUDIT-6: a record must be under a witnessed checkpoint this long after it.
            witness_deadline=float(config.get("audit", "checkpoint_interval_seconds"))
            + float(config.get("audit", "witness_grace_seconds")),
            incidents=incidents,
        )
    )
    trust_domain = "securecore"
    # The DMZ edges whose relayed client identities are trusted, checked against the
    # serving context's CAs and CRL (securecore.server.forwarded).
    edges = config.get("edge", "principals")
    edge = (
        EdgeTrust(edges, tls, trust_domain, operators=operators, audit=append_async)
        if edges
        else None
    )
    app = create_app(
        trust_domain=trust_domain,
        readiness={
            "audit_writer": audit_log.check,
            "signing_key": signing_key,
            # SQLite: the file opens. PostgreSQL: 503 while the database is not writable
            # (a failover), asked on the state's own connection - not on a new one per
            # probe, which would cost a TLS handshake each time and fail for a moment
            # whenever the host's client certificate and key are being replaced.
            **(
                {"state_database": sessions_state.check_writable}
                if isinstance(sessions_state, PostgresState)
                else {"audit_store": audit_store}
            ),
        },
        sessions=sessions,
        policy=engine,
        metrics=metrics,
        admin=admin,
        intrusion=intrusion,
        plugins=plugin_routes(
            registry,
            caller,
            sessions,
            append,
            observe=metrics.observe_plugin_step,
            access=access,
        ),
        replication=replication_routes(
            lambda: open_store(config),
            lambda: signing_public_keys(ring),
            origin=config.get("audit", "origin"),
        ),
        plugin_view=registry.policy_view,
        operators=operators,
        # An own log writes what is queued and a final signed checkpoint; a
        # worker's connection to the supervisor's writer just ends.
        on_shutdown=audit_log.close,
        body_bytes=body_bytes,
        route_body_bytes=route_body_bytes,
        edge=edge,
    )
    settings = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=TLSScopeHttpToolsProtocol,
        loop="uvloop",
        ssl_context_factory=lambda _config, _default: tls.context,
        log_config=log_config(),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
        # No header may change who the client is, except what a configured DMZ edge
        # relays, checked by the application (securecore.server.forwarded).
        proxy_headers=False,
    )
    server = ServerWithLocalAdmin(settings, admin, local_admin)
    if own_log is not None:
        own_log.on_failure(lambda error: _stop_after_audit_failure(server, audit_failed, error))

    def reload_tls(trigger: str) -> None:
        """SIGHUP or a TLS file changed: certificates, keys, CA and CRL read again;
        connections stay. Runs in the watcher's thread, one reload at a time."""
        try:
            fresh = tls.reload()
            client_policy = plugin_client_policy(config, fresh)
            caller.use(client_policy)
            own = {own_certificate_fingerprint(client_policy)}
        except (TLSPolicyError, ConfigError, OSError, ValueError) as error:
            log.error("TLS reload failed, the current certificates stay: %s", error)
            append(
                "securecore",
                "service.tls_reload",
                str(tls.policy_file),
                "failure",
                {"error": str(error), "trigger": trigger},
            )
            return
        watcher.interval = fresh.watch_seconds
        operators.intersection_update(own)
        operators.update(own)
        served = certificate_summary(fresh.server_certificate)
        log.info(
            "TLS reloaded (%s): serving certificate %s", trigger, served["serial"], extra=served
        )
        append(
            "securecore",
            "service.tls_reload",
            str(tls.policy_file),
            "success",
            {**served, "trigger": trigger},
        )
        end_revoked_sessions(tls, sessions, append)

    end_revoked_sessions(tls, sessions, append)  # revoked while the service was down
    watcher = TLSFileWatcher(
        tls.watched_files, reload_tls, tls.policy.watch_seconds, loaded=tls.loaded
    ).start()
    signal.signal(signal.SIGHUP, lambda _signum, _frame: watcher.reload_now())
    return server


def end_revoked_sessions(
    tls: ReloadableServerContext,
    sessions: SessionManager,
    audit: Callable[..., int],  # AuditLog.append
) -> None:
    """Revoke the sessions bound to a certificate the CRL in force revokes, and audit it:
    a token must not outlive the certificate it was bound to (and is refused
    whatever certificate presents it)."""
    serials = [format(serial, "x") for serial in tls.revoked_serials]
    if not serials:
        return
    ended = sessions.revoke_by_certificate(serials, reason="certificate revoked (CRL)")
    if not ended:
        return
    log.warning("%d session(s) ended: their certificates are revoked", len(ended))
    audit(
        "securecore",
        "session.revoked_by_crl",
        str(tls.policy.crl_file),
        "success",
        {
            "sessions": ended,
            "serials": sorted({session["serial"] for session in ended}),
        },
    )


def _stop_after_audit_failure(
    server: uvicorn.Server, failed: threading.Event | None, error: BaseException
) -> None:
    """From the writer thread: drain (readiness 503), then stop; the exit status says why."""
    log.critical(
        "the audit log writer stopped (%s): the service stops and exits with %d",
        error,
        AUDIT_FAILURE_EXIT,
    )
    if failed is not None:
        failed.set()

    def stop() -> None:
        server.should_exit = True  # uvicorn's main loop looks at it every 0.1 s

    threading.Timer(AUDIT_FAILURE_DRAIN_SECONDS, stop).start()


def certificate_summary(path: str | Path | None) -> dict[str, str]:
    certificate = x509.load_pem_x509_certificate(Path(str(path)).read_bytes())
    return {
        "serial": format(certificate.serial_number, "x"),
        "not_after": certificate.not_valid_after_utc.isoformat(),
        "sha256": certificate.fingerprint(hashes.SHA256()).hex(),
    }


def serve(args: argparse.Namespace) -> int:
    config = configuration.load(args.config)
    workers = args.workers if args.workers is not None else config.get("service", "workers")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: at least one worker is needed")
    plugin_access(config)  # a malformed access rule stops the start, not a worker
    if workers == 1:
        audit_failed = threading.Event()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})  # held until handled
        server = build_server(config, audit_failed=audit_failed)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        try:
            server.run()
        finally:
            local_admin_path(config.get("service", "data_dir")).unlink(missing_ok=True)
        return AUDIT_FAILURE_EXIT if audit_failed.is_set() else 0
    return supervise(config, workers)


# --- several workers -------------------------------------------------------------------

WORKER_RESTART_PAUSE = 1.0


PR_SET_PDEATHSIG = 1  # prctl(2)


def _end_with_the_supervisor(supervisor: int) -> None:
    """A worker whose supervisor dies (even by SIGKILL) ends at once, by the kernel's
    hand: its supervisor held the audit writer, so nothing it would still answer
    could be recorded, and it must not hold the listening socket open meanwhile.
    Its connections are cut, not answered 503: an edge sends the idempotent requests
    on them to another instance (a request may have been served before the cut,
    which is why only those are tried again)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    # The supervisor may have died before the signal was asked for.
    if os.getppid() != supervisor:
        os.kill(os.getpid(), signal.SIGKILL)


def _worker(
    supervisor: int,
    config_path: str,
    listening: socket.socket,
    audit_socket: str,
    local_admin: socket.socket,
) -> None:
    _end_with_the_supervisor(supervisor)
    config = configuration.load(config_path)
    server = build_server(config, audit=RemoteAuditLog(audit_socket), local_admin=local_admin)
    # Started with SIGHUP blocked (see start()): one sent meanwhile is held,
    # and arrives now that build_server handles it.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    server.run(sockets=[listening])


def _fresh_metrics_dir(directory: Path) -> Path:
    """The workers' metric files start empty: counters count from this start."""
    directory.mkdir(mode=0o700, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    return directory


def supervise(config: configuration.Config, workers: int) -> int:
    logging.config.dictConfig(log_config())
    _, host, port = tls_and_address(config)  # a bad policy stops us before any worker
    # Bound before anything runs: a second service on this data directory stops here.
    admin_path = local_admin_path(config.get("service", "data_dir"))
    local_admin = bind_local_admin(admin_path)
    body_limits(config)  # and so does a bad limit
    audit = open_audit_log(config, open_key_ring(config))
    audit_failed = threading.Event()
    audit.on_failure(lambda error: audit_failed.set())
    writer = AuditWriterServer(audit, Path(config.get("service", "data_dir")) / "audit.sock")
    writer.start()
    # No application: this Config only binds the socket the workers share, and
    # uvicorn's annotation wants one.
    listening = uvicorn.Config(app=None, host=host, port=port).bind_socket()  # type: ignore[arg-type]
    metrics_dir = _fresh_metrics_dir(Path(config.get("service", "data_dir")) / "metrics")
    os.environ[MULTIPROCESS_DIR] = str(metrics_dir)  # read by the workers' prometheus_client
    spawn = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def start() -> SpawnProcess:
        process = spawn.Process(
            target=_worker,
            args=(os.getpid(), str(config.path), listening, str(writer.path), local_admin),
            name="securecore-worker",
        )
        # A reload must not kill a worker that is still starting (SIGHUP's default
        # action): the worker inherits the blocked signal and unblocks it when ready.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        return process

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    def forward_reload(signum: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    processes: list[SpawnProcess] = []
    signal.signal(signal.SIGHUP, forward_reload)
    processes.extend(start() for _ in range(workers))
    log.info("supervisor started %d workers", workers, extra={"workers": workers})
    try:
        while not stopping.wait(WORKER_RESTART_PAUSE):
            if audit_failed.is_set() or not writer.alive:
                # The workers' audited requests and readiness already answer 503
                # (the writer answers them with its error); after the drain,
                # every process ends and systemd starts the service again.
                audit_failed.set()
                log.critical(
                    "the audit log writer stopped: the service stops and exits with %d",
                    AUDIT_FAILURE_EXIT,
                )
                stopping.wait(AUDIT_FAILURE_DRAIN_SECONDS)
                break
            for index, process in enumerate(processes):
                if not process.is_alive():
                    log.error(
                        "worker %s ended with %s; starting another", process.pid, process.exitcode
                    )
                    mark_process_dead(process.pid, str(metrics_dir))
                    processes[index] = start()
    finally:
        for process in processes:
            process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        for process in processes:
            process.join(GRACEFUL_SHUTDOWN_SECONDS + 5)
            if process.is_alive():
                process.kill()
                process.join(5)
        try:
            writer.stop()
            audit.close()  # the last records and a final signed checkpoint
            listening.close()
            local_admin.close()
            admin_path.unlink(missing_ok=True)
        finally:
            _stop_resource_tracker()
    return AUDIT_FAILURE_EXIT if audit_failed.is_set() else 0


def _stop_resource_tracker() -> None:
    """End multiprocessing's resource tracker (started with the first worker) and wait
    for it, so that the supervisor is the service's last process to end. Left to
    itself it ends after the supervisor, as an orphan, and a service manager that
    sees its main process end but not the tracker's (systemd without cgroup
    notifications, as in containers) waits out its whole stop timeout."""
    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:  # private, but in every Python this package supports
        stop()
