"""The standby's copy of the active's audit log (`securecore audit replicate`).

A real service on loopback is the origin; the copy is made over mutual TLS and
checked against the origin's signed checkpoints. A log restored on the origin
(history changed) and a copy changed on the standby's disk are refused.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from securecore.audit.checkpoint import verify_checkpoint
from securecore.audit.replica import AuditReplica, ReplicaError
from securecore.audit.store import SQLiteAuditStore
from securecore.audit.witness import load_origin_keys
from securecore.tls import TLSPolicy
from tests.support.devserver import admin, call, dev_server, wait_for_port


def fast_checkpoints(text: str) -> str:
    return text.replace("checkpoint_interval_seconds = 10", "checkpoint_interval_seconds = 1")


def replicate(server, copy: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return admin(
        server,
        "audit",
        "replicate",
        "--from",
        f"https://127.0.0.1:{server['port']}",
        "--directory",
        str(copy),
        check=check,
    )


def counts(out: str) -> tuple[int, int, int]:
    """(records held, checked through, origin's size) from replicate's report."""
    found = re.search(r": (\d+) records .* through (\d+); the origin holds (\d+)", out)
    assert found, out
    return int(found[1]), int(found[2]), int(found[3])


def until_checkpoint_beyond(server, size: int) -> None:
    """Requests until the origin has signed a checkpoint beyond SIZE (bounded)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        call(server, "GET", "/v1/whoami")
        store = SQLiteAuditStore(server["config"].parent / "data" / "audit.db")
        try:
            if any(s > size for s, _ in store.checkpoints()):
                return
        finally:
            store.close()
        time.sleep(0.3)
    pytest.fail(f"no checkpoint beyond {size} within 30 s")


def test_the_copy_follows_the_origin_and_checks_its_checkpoints(tmp_path: Path) -> None:
    copy = tmp_path / "replica"
    with dev_server(tmp_path / "dev", edit_config=fast_checkpoints) as server:
        for _ in range(5):
            call(server, "GET", "/v1/whoami")
        until_checkpoint_beyond(server, 5)
        held, checked, origin = counts(replicate(server, copy).stdout)
        assert held == origin and 5 < checked <= held
        until_checkpoint_beyond(server, held)
        again, checked_again, _ = counts(replicate(server, copy).stdout)
        assert again > held and checked_again > checked
        # Anything but a core host or an administrator is refused.
        as_plugin = TLSPolicy.from_file(server["tls"] / "plugin-policy.json")
        pinned = load_origin_keys(server["config"].parent / "origin-keys.json")
        plugin = AuditReplica(
            tmp_path / "other", f"https://127.0.0.1:{server['port']}", as_plugin, pinned
        )
        with pytest.raises(ReplicaError, match="403"):
            plugin.pull()
        plugin.close()
    # The copy holds the origin's records byte for byte and its signed notes.
    origin_db = SQLiteAuditStore(server["config"].parent / "data" / "audit.db")
    replica_db = SQLiteAuditStore(copy / "audit.db")
    assert list(replica_db.entries()) == list(origin_db.entries())[:again]
    keys = _origin_keys(server)  # the copy checks out with the origin's public keys alone
    for size, note in replica_db.checkpoints():
        assert verify_checkpoint(note, keys).size == size


def _origin_keys(server) -> dict:
    from securecore.config import load
    from securecore.keys import signing_public_keys
    from securecore.keys.factory import open_key_ring

    return signing_public_keys(open_key_ring(load(server["config"])))


def serve_again(config: Path, port: int) -> subprocess.Popen:
    log = (config.parent / "server-again.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "securecore", "serve", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    assert wait_for_port(port), (config.parent / "server-again.log").read_text()
    return process


def test_a_log_restored_on_the_origin_is_refused_and_the_copy_kept(tmp_path: Path) -> None:
    copy = tmp_path / "replica"
    with dev_server(tmp_path / "dev", edit_config=fast_checkpoints) as server:
        backup = admin(server, "backup").stdout.split("backup written: ")[1].splitlines()[0]
        for _ in range(15):
            call(server, "GET", "/v1/whoami")
        until_checkpoint_beyond(server, 15)
        held, _, _ = counts(replicate(server, copy).stdout)
    admin(server, "restore", backup)  # the origin goes back in time ...
    process = serve_again(server["config"], server["port"])
    try:
        refused = replicate(server, copy, check=False)
        assert refused.returncode == 2 and "truncated or restored" in refused.stderr
        # ... and writes a different history past what the copy holds.
        until_checkpoint_beyond(server, held + 5)
        refused = replicate(server, copy, check=False)
        assert refused.returncode == 2, refused.stdout
        assert "diverged" in refused.stderr and "rewritten or restored" in refused.stderr
    finally:
        process.terminate()
        process.wait(30)
    replica_db = SQLiteAuditStore(copy / "audit.db")
    assert replica_db.size() == held  # nothing of the refused batches was kept
    replica_db.close()


def test_a_copy_changed_on_the_standby_is_found(tmp_path: Path) -> None:
    copy = tmp_path / "replica"
    with dev_server(tmp_path / "dev", edit_config=fast_checkpoints) as server:
        until_checkpoint_beyond(server, 3)
        replicate(server, copy)
        with sqlite3.connect(copy / "audit.db") as db:
            db.execute("UPDATE audit_records SET entry = CAST(entry || ' ' AS BLOB) WHERE seq = 2")
        refused = replicate(server, copy, check=False)
    assert refused.returncode == 2 and "the copy changed" in refused.stderr
