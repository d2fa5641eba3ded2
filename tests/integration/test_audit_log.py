"""The audit log on a real SQLite database and witness directory: durability and tampering."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from securecore.audit.log import AuditError
from securecore.audit.store import SQLiteAuditStore
from securecore.keys.software import SoftwareKeys
from tests.support.auditlog import append_from_threads, open_log, verify
from tests.support.commands import ROOT


@pytest.fixture
def written(tmp_path: Path, keys: SoftwareKeys) -> Path:
    """A log of 200 records from 8 threads, checkpointed every 50."""
    log = open_log(tmp_path, keys, checkpoint_every=50)
    seqs = append_from_threads(log)
    log.close()
    assert sorted(seqs) == list(range(1, 201))
    return tmp_path


def test_appends_from_an_event_loop_and_threads_share_one_durable_order(
    tmp_path: Path, keys
) -> None:
    log = open_log(tmp_path, keys, checkpoint_every=64)

    async def from_the_loop() -> list[int]:
        return await asyncio.gather(
            *(
                log.append_async("admin/alice", "policy.acl", "core", "allowed", {"n": n})
                for n in range(300)
            )
        )

    loop_seqs = asyncio.run(from_the_loop())
    thread_seqs = append_from_threads(log)
    durable = log.size  # every awaited record was committed before its await returned
    log.close()
    assert durable == 500
    assert sorted(loop_seqs + thread_seqs) == list(range(1, 501))
    assert verify(tmp_path, keys).ok


def test_every_appender_is_told_its_own_sequence_number(tmp_path: Path, keys) -> None:
    """Each record's number is its receipt (the response header of a decision):
    appenders racing for one batch must each get their own."""
    log = open_log(tmp_path, keys, checkpoint_every=1000)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two steps, as on many CPUs
    try:
        seqs = append_from_threads(log, threads=8, each=300)
    finally:
        sys.setswitchinterval(interval)
    log.close()
    assert sorted(seqs) == list(range(1, 2401))


def test_an_append_awaited_after_the_log_failed_raises(tmp_path: Path, keys) -> None:
    log = open_log(tmp_path, keys)
    log.store.close()  # the next commit fails

    async def append() -> int:
        return await log.append_async("admin/alice", "policy.acl", "core", "allowed")

    with pytest.raises(AuditError, match="audit write failed"):
        asyncio.run(append())
    with pytest.raises(AuditError, match="stopped after an error"):
        asyncio.run(append())


def sql(tmp_path: Path, statement: str) -> None:
    with sqlite3.connect(tmp_path / "audit.db") as db:
        db.executescript(statement)


@pytest.fixture(params=[4, 64, 1 << 16], ids=lambda n: f"chunk-{n}")
def verify_chunk(request, monkeypatch) -> int:
    """verify_log checks records a chunk at a time: its results must not depend on
    where the chunks end (200 records: 50 chunks, 4, or one)."""
    monkeypatch.setattr("securecore.audit.chunks.VERIFY_CHUNK", request.param)
    return request.param


def test_an_untouched_log_verifies_with_its_checkpoints(written: Path, keys, verify_chunk) -> None:
    result = verify(written, keys)
    assert result.ok and result.size == 200 and result.checkpoints == 4, result
    assert sorted(p.name for p in (written / "witness" / "checkpoints").iterdir())[-1] == (
        "000000000200"
    )


# The outcome of a record changed inside its stored entry.
SWAP_OUTCOME = (
    'CAST(replace(CAST(entry AS TEXT), \'"outcome":"success"\', \'"outcome":"failure"\') AS BLOB)'
)


@pytest.mark.parametrize(
    ("statement", "first_bad", "problem"),
    [
        (f"UPDATE audit_records SET entry = {SWAP_OUTCOME} WHERE seq=77", 77, "modified"),
        ("DELETE FROM audit_records WHERE seq=120", 120, "record 120 is missing"),
        (
            'INSERT INTO audit_records VALUES (201, CAST(\'{"seq":201,"x":1}\' AS BLOB))',
            201,
            "inserted",
        ),
        (
            "UPDATE audit_records SET seq = 1000 + seq WHERE seq IN (10, 11); "
            "UPDATE audit_records SET seq = 11 WHERE seq = 1010; "
            "UPDATE audit_records SET seq = 10 WHERE seq = 1011",
            10,
            "carries another sequence number",
        ),
        ("DELETE FROM audit_records WHERE seq > 180", 181, "truncated"),
    ],
    ids=["modified", "deleted", "inserted", "reordered", "truncated"],
)
def test_every_kind_of_change_is_named_by_its_first_sequence_number(
    written: Path, keys, statement: str, first_bad: int, problem: str, verify_chunk
) -> None:
    sql(written, statement)
    result = verify(written, keys)
    assert not result.ok and result.first_bad_seq == first_bad and problem in result.problem, result


def test_rewriting_database_and_witness_leaves_is_caught_by_the_signed_checkpoints(
    written: Path, keys, verify_chunk
) -> None:
    sql(written, f"UPDATE audit_records SET entry = {SWAP_OUTCOME} WHERE seq=33")
    store = SQLiteAuditStore(written / "audit.db")
    record = next(r for r in store.records() if r.seq == 33)
    store.close()
    from securecore.audit import merkle

    leaves = bytearray((written / "witness" / "leaves").read_bytes())
    leaves[32 * 32 : 33 * 32] = merkle.leaf_hash(record.entry())
    (written / "witness" / "leaves").write_bytes(bytes(leaves))
    result = verify(written, keys)
    assert not result.ok and "does not match its signed checkpoint" in result.problem, result
    assert 33 <= result.size < 200  # the first checkpoint after the change


def test_secret_values_never_reach_the_database(tmp_path: Path, keys) -> None:
    log = open_log(tmp_path, keys)
    log.append(
        "admin",
        "rotate",
        "hsm",
        "success",
        {"user_pin": "4711-0815", "nested": {"api_key": "abc123secret"}},
    )
    log.close()
    data = b"".join(p.read_bytes() for p in tmp_path.glob("audit.db*"))
    assert b"4711-0815" not in data and b"abc123secret" not in data
    assert b"hmac-sha256:" in data


WRITER = """
import os, sys
from pathlib import Path
from securecore.audit.log import AuditLog
from securecore.audit.store import SQLiteAuditStore
from securecore.keys.base import KeyRing
from securecore.keys.software import SoftwareKeys
base = Path(sys.argv[1])
ring = KeyRing(SoftwareKeys(base / "keys"), "securecore-signing", "securecore-kek")
log = AuditLog(SQLiteAuditStore(base / "audit.db"), ring, base / "witness",
               origin="securecore.test/audit", hmac_key=b"k" * 32, checkpoint_every=100)
import threading
def worker():
    for _ in range(100000):
        seq = log.append("load", "write", "core", "success", {})
        os.write(1, f"{seq}\\n".encode())  # one write: lines from threads never interleave
threads = [threading.Thread(target=worker) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_kill_9_under_load_loses_no_acknowledged_record(tmp_path: Path, keys) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[int] = []
    deadline = time.monotonic() + 30
    assert writer.stdout is not None
    while len(acknowledged) < 3000 and time.monotonic() < deadline:
        line = writer.stdout.readline()
        if not line:
            break
        acknowledged.append(int(line))
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=10)
    assert len(acknowledged) >= 3000, "the writer did not get going"
    # Reopening recovers (drops witness leaves of records never committed) ...
    reopened = open_log(tmp_path, keys)
    reopened.close()
    store = SQLiteAuditStore(tmp_path / "audit.db")
    stored = {record.seq for record in store.records()}
    store.close()
    # ... and every acknowledged record is there, and the whole log verifies.
    assert set(acknowledged) <= stored
    result = verify(tmp_path, keys)
    assert result.ok, result


def test_a_quiet_log_is_checkpointed_after_the_interval(tmp_path: Path, keys) -> None:
    log = open_log(tmp_path, keys, checkpoint_every=1000, checkpoint_interval=0.3)
    for i in range(3):
        log.append("alice", "login", "core", "success", {"i": i})
    deadline = time.monotonic() + 10
    checkpoints = tmp_path / "witness" / "checkpoints"
    while not (checkpoints / "000000000003").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (checkpoints / "000000000003").exists(), "no time-based checkpoint"
    log.close()
    assert verify(tmp_path, keys).ok


def test_a_store_made_before_cosigned_notes_were_kept_gains_their_table(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with sqlite3.connect(path) as db:  # the schema of the stores already deployed
        db.executescript(
            "CREATE TABLE audit_records (seq INTEGER PRIMARY KEY, entry BLOB NOT NULL);"
            "CREATE TABLE audit_checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);"
            "INSERT INTO audit_checkpoints VALUES (3, 'signed');"
        )
    db.close()
    store = SQLiteAuditStore(path)
    try:
        assert store.cosigned() == []
        for size, note in ((5, "one cosignature"), (3, "cosigned"), (5, "two cosignatures")):
            store.add_cosigned(size, note)
        assert store.cosigned() == [(3, "cosigned"), (5, "two cosignatures")]  # newest a size
        assert store.checkpoints() == [(3, "signed")]  # the signed notes are apart
    finally:
        store.close()


class HangingSQLiteStore(SQLiteAuditStore):
    """A real store whose commits wait, neither failing nor answering, while `hang` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.hang, self.release = threading.Event(), threading.Event()

    def append_batch(self, rows):  # type: ignore[no-untyped-def]
        if self.hang.is_set():
            self.release.wait(30)
        return super().append_batch(rows)


def test_appenders_on_one_loop_each_keep_their_own_deadline(tmp_path: Path, keys) -> None:
    """Appenders of one batch share one timer: each still fails at its own deadline,
    a later deadline is not cut short by an earlier one, and a record whose caller
    gave up (timed out or cancelled) is written all the same, once."""
    store = HangingSQLiteStore(tmp_path / "audit.db")
    log = open_log(tmp_path, keys, store)

    async def scenario() -> tuple[BaseException | int, ...]:
        store.hang.set()
        patient = asyncio.ensure_future(
            log.append_async("admin/a", "policy.acl", "core", "allowed", timeout=10.0)
        )
        hasty = asyncio.ensure_future(
            log.append_async("admin/b", "policy.acl", "core", "allowed", timeout=0.3)
        )
        cancelled = asyncio.ensure_future(
            log.append_async("admin/c", "policy.acl", "core", "allowed", timeout=10.0)
        )
        await asyncio.sleep(0.05)
        cancelled.cancel()
        started = time.monotonic()
        hasty_error = await asyncio.gather(hasty, return_exceptions=True)
        waited = time.monotonic() - started
        assert 0.1 < waited < 2.0, waited  # at its own deadline, not the patient one's
        await asyncio.sleep(0.5)
        assert not patient.done()  # the earlier deadline did not fail it
        store.release.set()
        return (hasty_error[0], await patient)

    hasty_error, patient_seq = asyncio.run(scenario())
    assert isinstance(hasty_error, AuditError)
    assert "not durable within 0.3 s" in str(hasty_error)
    assert 1 <= patient_seq <= 3
    log.close()
    with sqlite3.connect(tmp_path / "audit.db") as db:
        actors = sorted(
            json.loads(entry)["actor"] for (entry,) in db.execute("SELECT entry FROM audit_records")
        )
    assert actors == ["admin/a", "admin/b", "admin/c"]  # each once, none lost
    assert verify(tmp_path, keys).ok
