"""Encrypted, verifiable backups of the service's state, and their restore.

A backup is two files in the backup directory:
  securecore-backup-TIME.scb            an AES-256-GCM envelope (data key wrapped by the
                                        HSM key-encryption key) of a tar archive
  securecore-backup-TIME.manifest.json  what is inside (SHA-256 and size of every file,
                                        audit log size), the archive's SHA-256, signed
                                        with the HSM signing key
The archive holds consistent copies, made with SQLite's online backup API
while the service runs, of the audit database and of the state databases
(sessions, plugin registry with its wrapped channel keys, policy state), the
audit witness (leaf hashes and checkpoints) and the configuration file.
(With the PostgreSQL backends those are backed up with PostgreSQL's tools.)

Every backup is checked as a restore would check it before `securecore
backup` reports it written (`verify_backup`): the manifest's signature, the
archive's hash, the envelope, every file's hash, and the audit log of the
unpacked copy. Restore checks all of it again and replaces nothing unless
all of it holds. The state it replaces is kept in the data directory
(`pre-restore-TIME/`). `prune_backups` keeps the retention (full backups
30 days), never removing the newest backup.

Only authentic backups count (`signed_backups`): a manifest whose name
matches its signed id, whose signature verifies with a version of the
service's signing key still on the token, and whose archive has the signed
SHA-256. Anyone who can write the backup directory can drop files there; a
manifest that fails is reported and left alone - it never becomes "the
newest backup" (in `securecore facts`) and never decides what is pruned.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import shutil
import sqlite3
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from securecore.audit.log import verify_log
from securecore.audit.store import SQLiteAuditStore
from securecore.config import Config
from securecore.crypto.envelope import Envelope, EnvelopeError, open_envelope, seal
from securecore.errors import SecureCoreError
from securecore.keys import signing_public_keys
from securecore.keys.base import KeyRing, KeyStoreError, parse_key_id
from securecore.storage.state_db import STATE_ROLES, sqlite_path

FORMAT = "securecore-backup/1"


class BackupError(SecureCoreError):
    """A backup cannot be made, or a backup is damaged; nothing was replaced."""


def _context(backup_id: str) -> bytes:
    return f"securecore-backup/{backup_id}".encode()


def _manifest_bytes(manifest: dict) -> bytes:
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def create_backup(config: Config, ring: KeyRing, directory: str | Path | None = None) -> Path:
    if config.get("audit", "backend") != "sqlite":
        raise BackupError(
            f"{config.path}: [audit] backend = {config.get('audit', 'backend')!r}: back up "
            "PostgreSQL with its own tools (pg_basebackup, WAL archiving); `securecore backup` "
            "copies the SQLite store"
        )
    target = Path(directory or config.get("backup", "directory") or "")
    if not str(target):
        raise BackupError(f"{config.path}: [backup] directory is not set and no -o was given")
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.UTC)
    backup_id = now.strftime("%Y%m%dT%H%M%S.%fZ")
    database = Path(config.get("audit", "database"))
    witness = Path(config.get("audit", "witness_dir"))
    with tempfile.TemporaryDirectory(prefix="securecore-backup-") as scratch:
        copy = Path(scratch) / "audit.db"
        # The online backup API copies a consistent snapshot while writers continue.
        with sqlite3.connect(database) as source, sqlite3.connect(copy) as destination:
            source.backup(destination)
        audit_size = SQLiteAuditStore(copy).size()
        members = {"audit.db": copy.read_bytes(), "config.toml": config.path.read_bytes()}
        for name, path in _state_databases(config).items():
            if path.exists():
                state_copy = Path(scratch) / name
                with sqlite3.connect(path) as source, sqlite3.connect(state_copy) as destination:
                    source.backup(destination)
                members[f"state/{name}"] = state_copy.read_bytes()
        for path in sorted(witness.rglob("*")):
            if path.is_file() and not path.name.endswith(".tmp"):
                members[f"witness/{path.relative_to(witness)}"] = path.read_bytes()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(now.timestamp()), 0o600
            tar.addfile(info, io.BytesIO(data))
    sealed = seal(ring, archive.getvalue(), _context(backup_id)).to_bytes()
    blob_path = target / f"securecore-backup-{backup_id}.scb"
    blob_path.write_bytes(sealed)
    blob_path.chmod(0o600)
    manifest = {
        "format": FORMAT,
        "id": backup_id,
        "created": now.isoformat(),
        "archive": blob_path.name,
        "archive_sha256": hashlib.sha256(sealed).hexdigest(),
        "audit_records": audit_size,
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in members.items()
        },
    }
    kid, signature = ring.sign(_manifest_bytes(manifest))
    manifest["signature"] = {"kid": kid, "value": base64.b64encode(signature).decode()}
    manifest_path = target / f"securecore-backup-{backup_id}.manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest_path


def _state_databases(config: Config) -> dict[str, Path]:
    """The SQLite state databases (sessions, plugins, policy) by file name; none on PostgreSQL."""
    if config.get("state", "backend") != "sqlite":
        return {}
    return {f"{role}.db": sqlite_path(config, role) for role in STATE_ROLES}


def _set_aside(path: Path, kept: Path) -> None:
    """The database PATH, with its WAL and shared-memory files (SQLite pairs them by
    name, so the kept copy stays openable), moved into the directory KEPT."""
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        if path.with_name(name).exists():
            shutil.move(path.with_name(name), kept / name)


def _replace_contents(directory: Path, restored: Path, kept: Path) -> None:
    """DIRECTORY's files moved into KEPT and RESTORED's moved in: the directory itself
    stays (its parent need not be writable by the service, nor on the same disk)."""
    kept.mkdir(mode=0o700)
    directory.mkdir(mode=0o700, exist_ok=True)
    for child in sorted(directory.iterdir()):
        shutil.move(child, kept / child.name)
    for child in sorted(restored.iterdir()):
        shutil.move(child, directory / child.name)


def _checked_members(manifest_path: Path, ring: KeyRing) -> tuple[dict, dict[str, bytes]]:
    """Every check of a backup; the files it holds, or BackupError naming what is wrong."""
    where = str(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BackupError(f"{where}: not a readable manifest ({error})") from error
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{where}: format {manifest.get('format')!r} is not {FORMAT}")
    signature = manifest.get("signature") or {}
    try:
        valid = ring.verify(
            signature["kid"], _manifest_bytes(manifest), base64.b64decode(signature["value"])
        )
    except (KeyError, ValueError, TypeError):
        valid = False
    if not valid:
        raise BackupError(f"{where}: the manifest's signature does not verify")
    blob_path = manifest_path.parent / manifest["archive"]
    try:
        sealed = blob_path.read_bytes()
    except OSError as error:
        raise BackupError(f"{blob_path}: cannot read the archive ({error.strerror})") from error
    if hashlib.sha256(sealed).hexdigest() != manifest["archive_sha256"]:
        raise BackupError(f"{blob_path}: the archive's SHA-256 differs from the manifest's")
    try:
        plain = open_envelope(ring, Envelope.from_bytes(sealed), _context(manifest["id"]))
    except EnvelopeError as error:
        raise BackupError(f"{blob_path}: {error}") from error
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r") as tar:
        for info in tar.getmembers():
            if not info.isfile() or info.name.startswith(("/", "..")) or "/../" in info.name:
                raise BackupError(f"{blob_path}: unexpected member {info.name!r}")
            extracted = tar.extractfile(info)
            if extracted is None:
                raise BackupError(f"{blob_path}: member {info.name!r} cannot be read")
            members[info.name] = extracted.read()
    expected = manifest["files"]
    if set(members) != set(expected):
        raise BackupError(f"{blob_path}: the archive's files differ from the manifest's list")
    for name, data in members.items():
        if hashlib.sha256(data).hexdigest() != expected[name]["sha256"]:
            raise BackupError(f"{blob_path}: {name} differs from the manifest")
    return manifest, members


def _unpacked(manifest_path: Path, ring: KeyRing, directory: Path) -> dict:
    """Every check of the backup, its files written into DIRECTORY, and the unpacked
    audit log verified with the signing keys; the manifest, or BackupError."""
    manifest, members = _checked_members(manifest_path, ring)
    for name, data in members.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o600)
    store = SQLiteAuditStore(directory / "audit.db")
    try:
        result = verify_log(store, directory / "witness", signing_public_keys(ring))
    finally:
        store.close()
    if not result.ok:
        raise BackupError(f"{manifest_path}: the backed-up audit log fails: {result.problem}")
    return manifest


def verify_backup(ring: KeyRing, manifest_path: str | Path) -> dict:
    """All the checks a restore makes, replacing nothing: {"id", "audit_records", "files"}."""
    with tempfile.TemporaryDirectory(prefix="securecore-verify-") as scratch:
        manifest = _unpacked(Path(manifest_path), ring, Path(scratch))
    return {
        "id": manifest["id"],
        "audit_records": manifest["audit_records"],
        "files": sorted(manifest["files"]),
    }


def restore_backup(config: Config, ring: KeyRing, manifest_path: str | Path) -> dict:
    database = Path(config.get("audit", "database"))
    witness = Path(config.get("audit", "witness_dir"))
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=database.parent))
    try:
        manifest = _unpacked(Path(manifest_path), ring, staging)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = database.parent / f"pre-restore-{stamp}"
        kept.mkdir(mode=0o700)
        databases = [(database, staging / "audit.db")]
        # A backup made before the state databases were in it leaves them as they are.
        for name, current in _state_databases(config).items():
            if (staging / "state" / name).exists():
                databases.append((current, staging / "state" / name))
        for current, restored in databases:
            _set_aside(current, kept)
            restored.rename(current)
        _replace_contents(witness, staging / "witness", kept / "witness")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "id": manifest["id"],
        "audit_records": manifest["audit_records"],
        "state": sorted(n for n in manifest["files"] if n.startswith("state/")),
    }


def _authentic(ring: KeyRing, manifest: dict) -> bool:
    """The manifest is signed by a version of the signing key that is still on the token.

    Not `ring.verify`: that refuses versions past their grace period, and a backup
    older than a rotation is still ours (to keep or prune), only no longer restorable.
    """
    signature: Any = manifest.get("signature")  # JSON: checked by the lookups below
    try:
        name, _ = parse_key_id(signature["kid"])
        if name != ring.signing_key:
            return False
        public = ring.backend.public_key(signature["kid"])
        public.verify(
            base64.b64decode(signature["value"], validate=True),
            _manifest_bytes(manifest),
            ec.ECDSA(hashes.SHA256()),
        )
    except (KeyError, TypeError, ValueError, KeyStoreError, InvalidSignature):
        return False
    return True


def _signed_manifest(ring: KeyRing, path: Path) -> tuple[datetime.datetime, dict]:
    """PATH's signed creation time and manifest, or BackupError naming what fails.

    The archive is hashed (streamed), not opened: enough to know the pair is
    the one the service wrote, cheap enough for every backup in the directory.
    """
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BackupError(f"{path.name}: not a readable manifest") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path.name}: not a {FORMAT} manifest")
    if not _authentic(ring, manifest):
        raise BackupError(f"{path.name}: the manifest's signature does not verify")
    backup_id = manifest.get("id")
    # A signed manifest copied under another name (or pointing at another
    # archive) would let one backup's pruning delete another's archive.
    if (
        path.name != f"securecore-backup-{backup_id}.manifest.json"
        or manifest.get("archive") != f"securecore-backup-{backup_id}.scb"
    ):
        raise BackupError(f"{path.name}: the file names differ from the signed id {backup_id!r}")
    try:
        with (path.parent / manifest["archive"]).open("rb") as archive:
            digest = hashlib.file_digest(archive, "sha256").hexdigest()
        created = datetime.datetime.fromisoformat(manifest["created"])
    except OSError as error:
        raise BackupError(f"{path.name}: cannot read its archive ({error.strerror})") from error
    except (KeyError, TypeError, ValueError) as error:
        raise BackupError(f"{path.name}: no valid creation time") from error
    if digest != manifest.get("archive_sha256"):
        raise BackupError(f"{path.name}: the archive's SHA-256 differs from the manifest's")
    if created.tzinfo is None:
        raise BackupError(f"{path.name}: the creation time has no time zone")
    return created, manifest


def signed_backups(
    ring: KeyRing, directory: str | Path
) -> tuple[list[tuple[datetime.datetime, Path, dict]], list[str]]:
    """The authentic backups in DIRECTORY, oldest first, and "NAME: problem" for the others."""
    found, refused = [], []
    for path in sorted(Path(directory).glob("securecore-backup-*.manifest.json")):
        try:
            created, manifest = _signed_manifest(ring, path)
        except BackupError as error:
            refused.append(str(error))
            continue
        found.append((created, path, manifest))
    found.sort(key=lambda item: item[0])
    return found, refused


def prune_backups(
    ring: KeyRing, directory: str | Path, keep_days: int
) -> tuple[list[str], list[str]]:
    """Remove authentic backups created (signed time) more than KEEP_DAYS ago, never the
    newest authentic one: (ids removed, "NAME: problem" of manifests left alone)."""
    directory = Path(directory)
    backups, refused = signed_backups(ring, directory)
    cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=keep_days)
    removed = []
    for created, path, manifest in backups[:-1]:
        if created < cutoff:
            (directory / manifest["archive"]).unlink(missing_ok=True)
            path.unlink()
            removed.append(manifest["id"])
    return removed, refused
