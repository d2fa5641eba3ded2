"""`securecore backup`, `restore` and `emergency-snapshot` on a development setup."""

from __future__ import annotations

import base64
import datetime
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from securecore.config import load as load_config
from securecore.keys.factory import open_key_ring
from securecore.operations.backup import _manifest_bytes, prune_backups
from securecore.policy.state import PolicyState
from securecore.sessions.manager import SessionManager
from securecore.storage.state_db import open_state
from tests.support.commands import ROOT, WRITE_RECORDS, securecore, securecore_lab


def write_records(config: Path, count: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", WRITE_RECORDS, str(config), str(count)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def config(tmp_path: Path) -> Path:
    securecore_lab("init", str(tmp_path / "dev"))
    path = tmp_path / "dev" / "config.toml"
    write_records(path, 120)
    return path


@pytest.fixture
def software_config(tmp_path: Path) -> Path:
    """With keys in files: these tests open the key ring in this process too, and the
    PKCS#11 library, once loaded, stays bound to the first token it was given."""
    securecore_lab("init", str(tmp_path / "dev"), "--software-keys")
    path = tmp_path / "dev" / "config.toml"
    write_records(path, 120)
    return path


def backup(config: Path) -> Path:
    out = securecore("backup", "-c", str(config)).stdout
    return Path(out.split("backup written: ", 1)[1].splitlines()[0].strip())


def audit_size(config: Path) -> int:
    with sqlite3.connect(config.parent / "data" / "audit.db") as db:
        return db.execute("SELECT COUNT(*) FROM audit_records").fetchone()[0]


@pytest.mark.softhsm  # `securecore-lab init` keeps the keys on a SoftHSM2 token
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


@pytest.mark.softhsm  # `securecore-lab init` keeps the keys on a SoftHSM2 token
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


@pytest.mark.softhsm  # `securecore-lab init` keeps the keys on a SoftHSM2 token
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
    proc = securecore(
        "restore", "--verify-only", "-c", str(config), str(manifest_path), check=False
    )
    assert proc.returncode == 2 and "SHA-256 differs" in proc.stderr


def resign(ring, path: Path, **changes) -> dict:
    """The manifest at PATH changed and signed again with the service's key (an
    authentic backup made at another time); the new manifest."""
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    kid, signature = ring.sign(_manifest_bytes(manifest))
    manifest["signature"] = {"kid": kid, "value": base64.b64encode(signature).decode()}
    path.write_text(json.dumps(manifest))
    return manifest


def days_ago(days: int) -> str:
    return (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days)).isoformat()


def test_backups_older_than_the_retention_are_removed_but_never_the_newest(
    software_config: Path,
) -> None:
    config = software_config
    ring = open_key_ring(load_config(config))
    old = backup(config)
    # Aged 31 days (pruning goes by the manifest's signed date).
    manifest = resign(ring, old, created=days_ago(31))
    assert prune_backups(ring, old.parent, 30) == ([], [])  # the only backup is the newest
    out = securecore("backup", "-c", str(config), "--keep-days", "30").stdout
    assert f"backup removed (older than 30 days): {manifest['id']}" in out
    assert not old.exists() and not (old.parent / manifest["archive"]).exists()
    assert len(list(old.parent.glob("*.manifest.json"))) == 1
    bad = securecore("backup", "-c", str(config), "--keep-days", "0", check=False)
    assert bad.returncode == 2 and "at least 1" in bad.stderr


def forge(ring, real: Path, how: str) -> Path:
    """A manifest beside the real backup REAL that claims to be a newer backup (or, for
    "old-unsigned", an old one holding REAL's archive), forged as HOW says."""
    genuine = json.loads(real.read_text())
    forged_id = "29991231T235959.000000Z" if how != "old-unsigned" else "20200101T000000.000000Z"
    path = real.with_name(f"securecore-backup-{forged_id}.manifest.json")
    manifest = {
        **genuine,
        "id": forged_id,
        "created": days_ago(0),
        "archive": f"securecore-backup-{forged_id}.scb",
    }
    archive = real.parent / genuine["archive"]
    if how in ("unsigned", "other-key", "tampered"):
        (real.parent / manifest["archive"]).write_bytes(archive.read_bytes())
    if how == "unsigned":
        del manifest["signature"]
    if how == "other-key":
        # The right key id, another key: what someone without the HSM can make.
        other = ec.generate_private_key(ec.SECP256R1())
        value = other.sign(_manifest_bytes(manifest), ec.ECDSA(hashes.SHA256()))
        manifest["signature"] = {
            "kid": genuine["signature"]["kid"],
            "value": base64.b64encode(value).decode(),
        }
    if how == "tampered":
        # The genuine signature kept, the contents (id, time, archive) changed.
        manifest["signature"] = genuine["signature"]
    if how == "renamed-copy":
        # A genuine manifest, signature intact, under a newer name.
        manifest = genuine
    if how == "old-unsigned":
        # Dated long ago and naming the real backup's archive: an old pruner removed it.
        manifest = {**manifest, "created": days_ago(400), "archive": genuine["archive"]}
        del manifest["signature"]
    path.write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize(
    "how", ["unsigned", "other-key", "tampered", "renamed-copy", "old-unsigned"]
)
def test_a_forged_manifest_is_never_the_newest_backup_nor_decides_pruning(
    software_config: Path, how: str
) -> None:
    config = software_config
    ring = open_key_ring(load_config(config))
    real = backup(config)
    genuine = resign(ring, real, created=days_ago(40))  # the newest real backup, 40 days old
    forged = forge(ring, real, how)

    facts = json.loads(securecore("facts", "-c", str(config)).stdout)["backup"]
    assert facts["newest"] == real.name, facts
    assert 40 * 24 - 1 < facts["newest_age_hours"] < 40 * 24 + 1
    [problem] = facts["unverified"]
    assert problem.startswith(forged.name + ": "), problem

    removed, refused = prune_backups(ring, real.parent, 30)
    assert removed == [] and refused == [problem]
    assert real.exists() and (real.parent / genuine["archive"]).exists()
    assert forged.exists()  # not ours to judge: reported, left alone
    restored = securecore("restore", "--verify-only", "-c", str(config), str(real))
    assert "nothing was replaced" in restored.stdout
    out = securecore("backup", "-c", str(config), "--keep-days", "30").stdout
    assert f"backup left alone (not verified, not counted): {problem}" in out
    # With a newer real backup, the old real one goes; the forgery stays.
    assert f"backup removed (older than 30 days): {genuine['id']}" in out
    assert not real.exists() and forged.exists()


def test_a_backup_whose_archive_was_replaced_does_not_count(software_config: Path) -> None:
    config = software_config
    ring = open_key_ring(load_config(config))
    real = backup(config)
    manifest = json.loads(real.read_text())
    (real.parent / manifest["archive"]).write_bytes(b"not the archive")
    facts = json.loads(securecore("facts", "-c", str(config)).stdout)["backup"]
    assert facts == {
        "kept_by": "host",
        "newest": None,
        "newest_age_hours": None,
        "unverified": [f"{real.name}: the archive's SHA-256 differs from the manifest's"],
    }
    assert prune_backups(ring, real.parent, 1)[0] == []
