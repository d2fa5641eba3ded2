"""`securecore backup`, `restore` and `emergency-snapshot` on a development setup."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

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


def backup(config: Path) -> Path:
    out = securecore("backup", "-c", str(config)).stdout
    return Path(out.split("backup written: ", 1)[1].strip())


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
    kept = list((config.parent / "data").glob("audit.db.pre-restore-*"))
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
