"""The audit log and store the configuration names, and its witnesses.

With `[audit] cluster = true` the log is one host's writer of a log shared
in PostgreSQL: the witnesses and verification take every host's pinned key
(`[audit] origin_keys`), which must include this host's.

The witnesses' cosigned notes go to the audit store as well as to
witness_dir/cosigned (the pusher hands them to AuditLog.record_cosigned), and
the anchors are read from both and from the witnesses: after a disaster the
hosts and their witness directories are gone and the witnesses hold only
their newest checkpoint, so the anchors of a restored log are those its
backup carried."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from securecore.audit.checkpoint import Checkpoint
from securecore.audit.log import AuditLog, Verification, verify_log
from securecore.audit.store import AuditStore, SQLiteAuditStore
from securecore.audit.witness import (
    COSIGNED_DIR,
    WitnessClient,
    WitnessError,
    WitnessPusher,
    load_origin_keys,
    load_witness_keys,
    newest_witnessed,
    stored_cosigned,
)
from securecore.config import BackendError, Config, ConfigError, first_line
from securecore.keys.base import KeyRing, parse_key_id, signing_public_keys
from securecore.keys.factory import read_secret_file
from securecore.tls import TLSPolicy

STARTUP_WITNESS_TIMEOUT = 5.0

log = logging.getLogger(__name__)


def open_store(config: Config) -> AuditStore:
    """The audit store, or BackendError naming the file and key (never the dsn: it may
    hold a password)."""
    if config.get("audit", "backend") == "postgresql":
        dsn = config.get("audit", "dsn")
        if not dsn:
            raise ConfigError(f"{config.path}: [audit] dsn is required with backend = postgresql")
        try:
            import psycopg

            from securecore.audit.postgres import PostgresAuditStore
        except ImportError as error:
            raise BackendError(
                f"{config.path}: [audit] backend = 'postgresql': psycopg is not installed"
            ) from error
        try:
            return PostgresAuditStore(dsn)
        except psycopg.Error as error:
            raise BackendError(
                f"{config.path}: [audit] dsn: cannot use the PostgreSQL audit store "
                f"({first_line(error)})"
            ) from error
    database = config.get("audit", "database")
    try:
        return SQLiteAuditStore(database)
    except (sqlite3.Error, OSError) as error:
        raise BackendError(
            f"{config.path}: [audit] database = {database}: cannot open it ({first_line(error)})"
        ) from error


def pinned_origin_keys(config: Config) -> dict:
    """[audit] origin_keys, read: {origin: {key id: public key}} (ConfigError if unset)."""
    path = config.get("audit", "origin_keys")
    if not path:
        raise ConfigError(
            f"{config.path}: [audit] origin_keys (the pinned checkpoint keys) is required"
        )
    try:
        return load_origin_keys(path)
    except WitnessError as error:
        raise ConfigError(f"{config.path}: [audit] origin_keys: {error}") from error


def witness_keys(config: Config) -> dict:
    """The pinned witness verifier keys ({} when no witness is configured)."""
    path = config.get("audit", "witness_keys")
    if config.get("audit", "witnesses") and not path:
        raise ConfigError(f"{config.path}: [audit] witnesses need witness_keys (pinned vkeys)")
    if not path:
        return {}
    try:
        return load_witness_keys(path)
    except WitnessError as error:
        raise ConfigError(f"{config.path}: [audit] witness_keys: {error}") from error


def witness_clients(
    config: Config, extra_urls: list[str] | tuple[str, ...] = (), timeout: float = 10
) -> list[WitnessClient]:
    witnesses = {**config.get("audit", "witnesses"), **{url: url for url in extra_urls}}
    if not witnesses:
        return []
    policy_path = config.get("tls", "policy")
    if not policy_path:
        raise ConfigError(f"{config.path}: [tls] policy is required to reach witnesses")
    context = TLSPolicy.from_file(policy_path).client_context()
    clients = []
    for name, url in witnesses.items():
        if not isinstance(url, str):
            raise ConfigError(f"{config.path}: [audit] witnesses.{name}: a URL string")
        try:
            clients.append(WitnessClient(name, url, context, timeout))
        except WitnessError as error:
            raise ConfigError(f"{config.path}: [audit] witnesses: {error}") from error
    return clients


def witnessed_checkpoints(
    config: Config,
    store: AuditStore,
    origin_keys: dict,
    clients: list[WitnessClient],
    keys: dict | None = None,
) -> tuple[list, list[str]]:
    """Checkpoints a pinned witness cosigned: each witness's newest (asked now) and the
    cosigned notes kept in STORE and in witness_dir; with the problems of witnesses that
    did not answer. A note counts only if its origin signature and a cosignature verify
    with the pinned keys: whoever writes the database can put anything in it."""
    keys = witness_keys(config) if keys is None else keys
    origin = config.get("audit", "origin")
    notes = [note for _, note in store.cosigned()]
    notes += stored_cosigned(Path(config.get("audit", "witness_dir")) / COSIGNED_DIR)
    problems = []
    for client in clients:
        try:
            note = client.latest(origin)
        except WitnessError as error:
            problems.append(str(error))
            continue
        if note is None:
            problems.append(f"witness {client.name} holds no checkpoint of {origin}")
            continue
        if not newest_witnessed([note], origin_keys, keys, origin):
            problems.append(f"witness {client.name}: its checkpoint has no valid signatures")
        notes.append(note)
    return newest_witnessed(notes, origin_keys, keys, origin), problems


def published_checkpoint_key(config: Config, ring: KeyRing) -> Callable[[], str | None]:
    """The key version that signs the next checkpoint: the newest one pinned for this
    origin in [audit] origin_keys, read again when the file changes.

    A key is published before it signs (pre-publication rollover, as DNSSEC does it):
    a rotation makes a new version that signs sessions at once, but a checkpoint
    signed with it before the witnesses pin it would be refused, and the records it
    covers stay unwitnessed until they do. So checkpoints stay on the newest pinned
    version until the rotation's pin reaches this host (playbooks/rotate-keys.yml
    pins it on the witnesses first). Without a pin for this origin (a site without
    witnesses, or a version retired meanwhile) the ring's newest version signs.
    """
    path, origin = config.get("audit", "origin_keys"), config.get("audit", "origin")
    seen: dict = {"stamp": None, "kid": None}

    def newest_pinned() -> str | None:
        if not path:
            return None
        try:
            stat = Path(path).stat()
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if stamp != seen["stamp"]:
                pinned = load_origin_keys(path).get(origin, {})
                ours = signing_public_keys(ring)
                same = [
                    kid
                    for kid, public in pinned.items()
                    if kid in ours and ours[kid].public_numbers() == public.public_numbers()
                ]
                seen["stamp"], seen["kid"] = stamp, max(same, key=_version, default=None)
        except (OSError, WitnessError) as error:
            log.warning(
                "%s: [audit] origin_keys unreadable, the newest key signs: %s", config.path, error
            )
            seen["stamp"], seen["kid"] = None, None
        return seen["kid"]

    return newest_pinned


def _version(kid: str) -> int:
    return parse_key_id(kid)[1]


def cluster_keys(config: Config, ring: KeyRing) -> Callable[[], dict]:
    """Cluster mode: the checkpoint keys of every host (the pinned [audit] origin_keys of
    this origin) with this host's own; a witness holds checkpoints signed by any of them.

    ConfigError at once when the pins lack this host's key: its checkpoints would be
    refused everywhere (two hosts with one [keys] signing_key name pin one key id)."""
    own = signing_public_keys(ring)
    pinned = pinned_origin_keys(config).get(config.get("audit", "origin"), {})
    if not any(
        kid in own and own[kid].public_numbers() == key.public_numbers()
        for kid, key in pinned.items()
    ):
        raise ConfigError(
            f"{config.path}: [audit] origin_keys pins no key of this host for "
            f"{config.get('audit', 'origin')!r}: each host of a cluster has its own [keys] "
            "signing_key name, and the file holds every host's `audit public-keys`"
        )

    def keys() -> dict:
        try:
            return {**self_origin_keys(config, ring), **signing_public_keys(ring)}
        except ConfigError as error:  # a pin file being replaced: own keys meanwhile
            log.warning("%s", error)
            return signing_public_keys(ring)

    return keys


def open_audit_log(config: Config, ring: KeyRing) -> AuditLog:
    keys = witness_keys(config)
    clients = witness_clients(config, timeout=STARTUP_WITNESS_TIMEOUT)
    cluster = config.get("audit", "cluster")
    origin_keys = cluster_keys(config, ring) if cluster else lambda: signing_public_keys(ring)

    store = open_store(config)

    def anchor() -> Checkpoint | None:  # asked by AuditLog before its writer starts
        if not keys:
            return None
        found, _ = witnessed_checkpoints(config, store, origin_keys(), clients, keys)
        return found[-1][0] if found else None

    try:
        log = AuditLog(
            store,
            ring,
            config.get("audit", "witness_dir"),
            origin=config.get("audit", "origin"),
            hmac_key=read_secret_file(config, "audit", "hmac_key_file"),
            checkpoint_every=config.get("audit", "checkpoint_every"),
            checkpoint_interval=float(config.get("audit", "checkpoint_interval_seconds")),
            anchor=anchor,
            checkpoint_key=published_checkpoint_key(config, ring),
            cluster=cluster,
        )
    except BaseException:
        store.close()  # a log refused (tampered with) or misconfigured: nothing else has it
        raise
    if clients:
        log.witness_pusher = WitnessPusher(
            witness_clients(config),
            keys,
            origin_keys,
            config.get("audit", "origin"),
            log.witness,
            on_cosigned=log.record_cosigned,  # the writer stores them: the backups carry them
        )
        log.on_checkpoint = log.witness_pusher.submit
        latest = log.latest_checkpoint()
        if latest is not None:  # what a crash may have kept from the witnesses
            log.witness_pusher.submit(max(s for s, _ in log.store.checkpoints()), latest)
    return log


def self_origin_keys(config: Config, ring: KeyRing) -> dict:
    """This host's checkpoint keys: the pinned ones if [audit] origin_keys names this
    origin (what the witnesses check), else the key ring's own."""
    origin = config.get("audit", "origin")
    if config.get("audit", "origin_keys"):
        pinned = pinned_origin_keys(config)
        if origin in pinned:
            return pinned[origin]
    return signing_public_keys(ring)


def anchored_verification(
    config: Config,
    ring: KeyRing,
    extra_witnesses: tuple[str, ...] = (),
    restored: int | None = None,
) -> tuple[Verification, list[str]]:
    """verify_log against the checkpoints the witnesses cosigned (their newest, asked now,
    and the cosigned notes kept in the store and witness_dir); with the problems of
    witnesses that could not be asked.
    RESTORED: the number of records a restore brought back (verify_log says what it changes)."""
    keys = self_origin_keys(config, ring)
    pinned_witnesses = witness_keys(config)
    clients = witness_clients(config, extra_witnesses)
    if extra_witnesses and not pinned_witnesses:
        raise ConfigError(
            f"{config.path}: --witness needs [audit] witness_keys (the pinned witness keys)"
        )
    store = open_store(config)
    try:
        witnessed, problems = witnessed_checkpoints(config, store, keys, clients, pinned_witnesses)
        result = verify_log(
            store,
            config.get("audit", "witness_dir"),
            keys,
            witnessed=witnessed,
            require_witness=bool(pinned_witnesses),
            checkpoint_interval=float(config.get("audit", "checkpoint_interval_seconds")),
            grace=float(config.get("audit", "witness_grace_seconds")),
            following=bool(config.get("audit", "cluster")),
            restored=restored,
        )
    finally:
        store.close()
    return result, problems
