"""`securecore backup`, `restore` and `emergency-snapshot` on a development setup."""

from __future__ import annotations

import datetime
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from securecore.backup import prune_backups
from securecore.config import load as load_config
from securecore.keys.factory import open_key_ring
from securecore.policy.state import PolicyState
from securecore.sessions.manager import SessionManager
from securecore.state_db import open_state
from tests.integration.helpers import ROOT
from tests.integration.test_audit_cli import WRITE_RECORDS, securecore


def write_records(config: Path, count: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", WRITE_RECORDS, str(config), str(count)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def config(tmp_path: Path) -> Path:
    securecore("init", str(tmp_path / "dev"))
    path = tmp_path / "dev" / "config.toml"
    write_records(path, 120)
    return path


@pytest.fixture
def software_config(tmp_path: Path) -> Path:
    """With keys in files: these tests open the key ring in this process too, and the
    PKCS#11 library, once loaded, stays bound to the first token it was given."""
    securecore("init", str(tmp_path / "dev"), "--software-keys")
    path = tmp_path / "dev" / "config.toml"
    write_records(path, 120)
    return path


def backup(config: Path) -> Path:
    out = securecore("backup", "-c", str(config)).stdout
    return Path(out.split("backup written: ", 1)[1].splitlines()[0].strip())


def audit_size(config: Path) -> int:
    with sqlite3.connect(config.parent / "data" / "audit.db") as db:
        return db.execute("SELECT COUNT(*) FROM audit_records").fetchone()[0]


def test_round_trip_brings_back_the_backed_up_state(config: Path) -> None:
    manifest_path = backup(config)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["audit_records"] == 120
    assert {"audit.db", "config.toml", "witness/leaves"} <= set(manifest["files"])
    archive = manifest_path.parent / manifest["archive"]
    assert b"SQLite format" not in archive.read_bytes()  # encrypted
    write_records(config, 30)  # the state moves on ...
    assert audit_size(config) == 150
    restored = securecore("restore", "-c", str(config), str(manifest_path))
    assert "120 audit records" in restored.stdout
    assert audit_size(config) == 120  # ... and comes back
    assert "audit log OK: 120 records" in securecore("audit", "verify", "-c", str(config)).stdout
    kept = list((config.parent / "data").glob("pre-restore-*/audit.db"))
    assert kept, "the replaced state is kept"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("archive", "the archive's SHA-256 differs from the manifest's"),
        ("manifest", "the manifest's signature does not verify"),
        ("archive-and-hash", "does not open"),
    ],
)
def test_a_damaged_backup_is_refused_and_nothing_is_replaced(
    config: Path, damage: str, message: str
) -> None:
    manifest_path = backup(config)
    manifest = json.loads(manifest_path.read_text())
    archive = manifest_path.parent / manifest["archive"]
    if damage.startswith("archive"):
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0x01
        archive.write_bytes(bytes(data))
    if damage == "manifest":
        manifest["audit_records"] = 999
        manifest_path.write_text(json.dumps(manifest))
    if damage == "archive-and-hash":
        # Someone also fixes the hash (and cannot re-sign the manifest).
        import hashlib

        manifest["archive_sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
        manifest_path.write_text(json.dumps(manifest))
        message = "the manifest's signature does not verify"
    write_records(config, 10)
    before = (config.parent / "data" / "audit.db").read_bytes()
    proc = securecore("restore", "-c", str(config), str(manifest_path), check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert (config.parent / "data" / "audit.db").read_bytes() == before
    assert audit_size(config) == 130


def test_emergency_snapshot_records_the_reason_durably(config: Path) -> None:
    proc = securecore(
        "emergency-snapshot",
        "-c",
        str(config),
        "--reason",
        "intrusion on plugin-01",
        "--by",
        "secops",
    )
    snapshot = json.loads((config.parent / "data" / "emergency" / "snapshot.json").read_text())
    assert snapshot["reason"] == "intrusion on plugin-01" and snapshot["audit_record"] == 121
    assert snapshot["keys_in_use"]["signing"] == "securecore-signing-v1"
    assert snapshot["latest_checkpoint"].split("\n")[1] == "121"
    assert "emergency snapshot written" in proc.stdout
    with sqlite3.connect(config.parent / "data" / "audit.db") as db:
        action, details = db.execute(
            "SELECT json_extract(entry, '$.action'), json_extract(entry, '$.details') "
            "FROM audit_records WHERE seq = 121"
        ).fetchone()
    assert action == "emergency.shutdown" and "intrusion on plugin-01" in details


def sessions_of(config: Path, ring) -> SessionManager:
    return SessionManager(ring, open_state(load_config(config), "sessions"))


def blocks_of(config: Path) -> PolicyState:
    loaded = load_config(config)
    return PolicyState(open_state(loaded, "policy"), config.parent / "data" / "policy.counters")


def test_the_state_databases_come_back_with_the_audit_log(software_config: Path) -> None:
    config = software_config
    ring = open_key_ring(load_config(config))
    sessions = sessions_of(config, ring)
    kept = sessions.create("admin/alice")
    blocks = blocks_of(config)
    blocks.block("ip", "203.0.113.9", time.time() + 3600, "brute force")
    manifest_path = backup(config)
    assert {"state/sessions.db", "state/policy.db"} <= set(
        json.loads(manifest_path.read_text())["files"]
    )
    # Afterwards: a session ends, another starts, the block is lifted.
    sessions.revoke(kept.session_id, "test")
    later = sessions.create("admin/bob")
    blocks.unblock("ip", "203.0.113.9")
    sessions.close()
    blocks.close()

    restored = securecore("restore", "-c", str(config), str(manifest_path)).stdout
    assert "state/policy.db, state/sessions.db" in restored
    sessions = sessions_of(config, ring)
    live = {s["id"] for s in sessions.list_live()}
    assert kept.session_id in live and later.session_id not in live
    assert blocks_of(config).blocked("ip", "203.0.113.9", time.time()) == "brute force"
    [kept] = (config.parent / "data").glob("pre-restore-*")
    assert (kept / "sessions.db").exists() and (kept / "witness" / "leaves").exists()
    sessions.close()


def test_verify_only_checks_everything_and_replaces_nothing(config: Path) -> None:
    manifest_path = backup(config)
    write_records(config, 5)
    before = (config.parent / "data" / "audit.db").read_bytes()
    checked = securecore("restore", "--verify-only", "-c", str(config), str(manifest_path))
    assert "verified: 120 audit records" in checked.stdout
    assert "nothing was replaced" in checked.stdout
    assert (config.parent / "data" / "audit.db").read_bytes() == before
    manifest = json.loads(manifest_path.read_text())
    archive = manifest_path.parent / manifest["archive"]
    archive.write_bytes(archive.read_bytes()[:-1] + b"\x00")
    proc = securecore("restore", "--verify-only", "-c", str(config), str(manifest_path),
                      check=False)  # fmt: skip
    assert proc.returncode == 2 and "SHA-256 differs" in proc.stderr


def test_backups_older_than_the_retention_are_removed_but_never_the_newest(
    config: Path,
) -> None:
    old = backup(config)
    manifest = json.loads(old.read_text())
    # Aged 31 days (pruning goes by the manifest's date).
    manifest["created"] = (datetime.datetime.now(datetime.UTC)
                           - datetime.timedelta(days=31)).isoformat()  # fmt: skip
    old.write_text(json.dumps(manifest))
    assert prune_backups(old.parent, 30) == []  # the only backup is the newest: kept
    out = securecore("backup", "-c", str(config), "--keep-days", "30").stdout
    assert f"backup removed (older than 30 days): {manifest['id']}" in out
    assert not old.exists() and not (old.parent / manifest["archive"]).exists()
    assert len(list(old.parent.glob("*.manifest.json"))) == 1
    bad = securecore("backup", "-c", str(config), "--keep-days", "0", check=False)
    assert bad.returncode == 2 and "at least 1" in bad.stderr
