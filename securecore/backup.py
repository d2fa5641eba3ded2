"""Encrypted, verifiable backups of the service's state, and their restore.

A backup is two files in the backup directory:
  securecore-backup-TIME.scb            an AES-256-GCM envelope (data key wrapped by the
                                        HSM key-encryption key) of a tar archive
  securecore-backup-TIME.manifest.json  what is inside (SHA-256 and size of every file,
                                        audit log size), the archive's SHA-256, signed
                                        with the HSM signing key
The archive holds a consistent copy of the audit database made with SQLite's
online backup API while the service runs, the audit witness (leaf hashes and
checkpoints) and the configuration file.

Restore checks everything first - the manifest's signature, the archive's
hash, the envelope, every file's hash, and the audit log of the restored copy
- and replaces nothing unless all of it holds. The state it replaces is kept
next to it (`*.pre-restore-TIME`).
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

from securecore.audit.commands import signing_public_keys
from securecore.audit.log import verify_log
from securecore.audit.store import SQLiteAuditStore
from securecore.config import Config
from securecore.crypto.envelope import Envelope, EnvelopeError, open_envelope, seal
from securecore.keys.base import KeyRing

FORMAT = "securecore-backup/1"


class BackupError(Exception):
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


def restore_backup(config: Config, ring: KeyRing, manifest_path: str | Path) -> dict:
    manifest, members = _checked_members(Path(manifest_path), ring)
    database = Path(config.get("audit", "database"))
    witness = Path(config.get("audit", "witness_dir"))
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=database.parent))
    try:
        for name, data in members.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o600)
        store = SQLiteAuditStore(staging / "audit.db")
        try:
            result = verify_log(store, staging / "witness", signing_public_keys(ring))
        finally:
            store.close()
        if not result.ok:
            raise BackupError(f"{manifest_path}: the backed-up audit log fails: {result.problem}")
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = f"{database.name}.pre-restore-{stamp}"
        # The old WAL and shared-memory files go with the old database, under
        # names SQLite pairs with it, so the kept copy stays openable.
        for suffix in ("-wal", "-shm"):
            sidecar = database.with_name(database.name + suffix)
            if sidecar.exists():
                sidecar.rename(database.with_name(kept + suffix))
        for current, restored in ((database, staging / "audit.db"), (witness, staging / "witness")):
            if current.exists():
                current.rename(current.with_name(f"{current.name}.pre-restore-{stamp}"))
            restored.rename(current)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"id": manifest["id"], "audit_records": manifest["audit_records"]}
