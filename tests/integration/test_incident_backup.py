"""The backup a host's state gets before it is contained, and its verification.

roles/incident/files/incident-backup, run as the role runs it: on a
directory with a SQLite database that is being written meanwhile, a file, a
symbolic link out of the tree; then verified, and verified again after each
kind of tampering.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "roles/incident/files/incident-backup"


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=check
    )


@pytest.fixture
def state(tmp_path: Path) -> Path:
    root = tmp_path / "state"
    (root / "tickets").mkdir(parents=True)
    database = sqlite3.connect(root / "tickets" / "tickets.db")
    database.execute("PRAGMA journal_mode=WAL")
    database.execute("CREATE TABLE tickets (id INTEGER PRIMARY KEY, title TEXT)")
    database.commit()
    database.close()
    (root / "channel.json").write_text('{"key": "not a real one"}')
    (root / "secrets").symlink_to("/etc/shadow")  # recorded as a link, never read
    return root


def made(state: Path, tmp_path: Path) -> dict:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    where = ["--directory", str(out), str(state), str(tmp_path / "absent")]
    result = run("make", "--incident", "INC-2026-0001", "--host", "plugin-01", *where)
    manifest = json.loads(result.stdout)
    manifest["dir"] = out
    return manifest


def test_a_database_being_written_is_backed_up_consistently_and_verifies(state, tmp_path) -> None:
    stop = threading.Event()

    def write() -> None:
        database = sqlite3.connect(state / "tickets" / "tickets.db", timeout=5)
        while not stop.is_set():
            database.execute("INSERT INTO tickets (title) VALUES ('x')")
            database.commit()
        database.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        manifest = made(state, tmp_path)
    finally:
        stop.set()
        writer.join()
    paths = {f["path"]: f for f in manifest["files"]}
    database = paths[str(state / "tickets" / "tickets.db")]
    assert database["sqlite_backup"] is True
    assert paths[str(state / "secrets")] == {"path": str(state / "secrets"), "link": "/etc/shadow"}
    assert manifest["missing"] == [str(tmp_path / "absent")]
    archive = manifest["dir"] / manifest["archive"]
    verified = run("verify", str(archive), str(manifest["dir"] / manifest["manifest"]))
    assert verified.stdout.startswith("verified: ")
    # The copy is one consistent database; the live one's write-ahead log is kept beside
    # it as it was, marked so that nobody restores it next to the copy.
    name = str(state / "tickets/tickets.db").lstrip("/")
    with tarfile.open(archive) as opened:
        stream = opened.extractfile(name)
        assert stream is not None
        (tmp_path / "copy.db").write_bytes(stream.read())
    assert paths[str(state / "tickets/tickets.db-wal")]["beside_a_copy"] is True
    copy = sqlite3.connect(tmp_path / "copy.db")
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert copy.execute("SELECT count(*) FROM tickets").fetchone()[0] > 0


def test_what_the_hosts_user_planted_is_archived_never_followed_or_opened_otherwise(
    state, tmp_path
) -> None:
    # A name that would end a URI's path: read as "planted.db" with options of the
    # attacker's choosing, SQLite would open (and create) that file instead.
    planted = state / "planted.db#?mode=rwc"
    shutil.copy(state / "tickets" / "tickets.db", planted)
    # A file that starts like a database and is not one, and a link to a directory.
    (state / "corrupt.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    (state / "etc").symlink_to("/etc")
    manifest = made(state, tmp_path)
    paths = {f["path"]: f for f in manifest["files"]}
    assert not (state / "planted.db").exists()
    assert paths[str(planted)]["sqlite_backup"] is True
    assert paths[str(state / "corrupt.db")]["sqlite_backup"] is False  # kept as it was
    assert paths[str(state / "etc")] == {"path": str(state / "etc"), "link": "/etc"}
    assert not [p for p in paths if p.startswith("/etc/")]
    archive = manifest["dir"] / manifest["archive"]
    assert run("verify", str(archive), str(manifest["dir"] / manifest["manifest"])).returncode == 0


def test_a_changed_archive_or_manifest_does_not_verify(state, tmp_path) -> None:
    manifest = made(state, tmp_path)
    archive, listed = manifest["dir"] / manifest["archive"], manifest["dir"] / manifest["manifest"]
    # A member's content changed, the manifest's archive hash made to match.
    forged = tmp_path / "forged.tar.gz"
    with tarfile.open(archive) as original, tarfile.open(forged, "w:gz") as copy:
        for member in original:
            stream = original.extractfile(member) if member.isfile() else None
            if member.name.endswith("channel.json"):
                content = b'{"key": "swapped"}'
                member.size = len(content)
                stream = io.BytesIO(content)
            copy.addfile(member, stream)
    edited = json.loads(listed.read_text())
    edited["archive_sha256"] = hashlib.sha256(forged.read_bytes()).hexdigest()
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    refused = run("verify", str(forged), str(tmp_path / "edited.json"), check=False)
    assert refused.returncode == 1 and "channel.json: its content is not what" in refused.stderr
    # A file dropped from the manifest, and the archive replaced.
    edited = json.loads(listed.read_text())
    edited["files"] = [f for f in edited["files"] if not f["path"].endswith("channel.json")]
    (tmp_path / "dropped.json").write_text(json.dumps(edited))
    refused = run("verify", str(archive), str(tmp_path / "dropped.json"), check=False)
    assert "channel.json: in the archive, not in the manifest" in refused.stderr
    refused = run("verify", str(forged), str(listed), check=False)
    assert "its SHA-256 is not the manifest's" in refused.stderr
