"""Several hosts writing one audit log on one PostgreSQL database (cluster mode, REQ-HA-10).

Each "host" is an AuditLog of its own: its own key ring (a signing key name
of its own), its own witness directory (leaf file), one shared database.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from securecore import config as configuration
from securecore.audit import factory, merkle
from securecore.audit.checkpoint import parse_checkpoint
from securecore.audit.factory import anchored_verification, open_audit_log, witness_keys
from securecore.audit.log import AuditError, AuditLog, verify_log
from securecore.audit.postgres import SEQUENCE_LOCK, SEQUENCER_LOCK, PostgresAuditStore
from securecore.audit.store import StoreUnavailableError
from securecore.audit.witness import (
    Witness,
    add_checkpoint_body,
    load_origin_keys,
    origin_keys_document,
    read_leaves,
    witnessed_checkpoint,
)
from securecore.keys.base import KeyRing, signing_public_keys
from securecore.keys.factory import open_key_ring
from securecore.keys.software import SoftwareKeys
from securecore.storage import failover
from securecore.storage.state_db import PostgresState, StateDatabaseError, StateUnavailableError
from tests.integration.test_audit_witness import core_policy, start_witness
from tests.support.auditlog import append_from_threads
from tests.support.commands import securecore_lab
from tests.support.devserver import admin, call, dev_server, get
from tests.support.postgres import fresh_database

ORIGIN = "securecore.test/cluster"


@pytest.fixture
def dsn(postgres_dsn: str, request: pytest.FixtureRequest) -> str:
    return fresh_database(postgres_dsn, f"cluster_{request.node.name[:40]}")


def host_ring(base: Path, name: str) -> KeyRing:
    directory = base / name / "keys"
    directory.mkdir(parents=True, mode=0o700)
    backend = SoftwareKeys(directory)
    backend.create_version(f"securecore-signing-{name}", "ec_p256")
    backend.create_version("securecore-kek", "aes256")
    return KeyRing(backend, f"securecore-signing-{name}", "securecore-kek")


def open_host(
    dsn: str,
    base: Path,
    ring: KeyRing,
    name: str,
    store: PostgresAuditStore | None = None,
    **options,
) -> AuditLog:
    options = {"checkpoint_every": 10**6, "checkpoint_interval": 3600.0, **options}
    return AuditLog(
        store or PostgresAuditStore(dsn),
        ring,
        base / name / "witness",
        origin=ORIGIN,
        hmac_key=b"k" * 32,
        cluster=True,
        **options,
    )


def stored(dsn: str) -> list[tuple[int, bytes]]:
    with psycopg.connect(dsn) as connection:
        rows = connection.execute("SELECT seq, entry FROM audit_records ORDER BY seq").fetchall()
    return [(int(seq), bytes(entry)) for seq, entry in rows]


def leaf_file(base: Path, name: str) -> bytes:
    return (base / name / "witness" / "leaves").read_bytes()


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def terminate(dsn: str, where: str) -> int:
    """pg_terminate_backend on the other sessions of DSN's database that match WHERE."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = current_database() AND pid <> pg_backend_pid() AND ({where})"
        ).fetchall()
    return len(rows)


def alive(dsn: str, pid: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    return bool(row and row[0])


def signers(dsn: str) -> list[str]:
    """The key of each stored checkpoint, by size, repeats merged."""
    store = PostgresAuditStore(dsn)
    try:
        names = [parse_checkpoint(note)[1][0][0] for _, note in store.checkpoints()]
    finally:
        store.close()
    return [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]


def database_away(dsn: str, postgres_dsn: str, seconds: float) -> threading.Thread:
    """No server takes DSN's database's sessions for SECONDS (what a switchover looks
    like to a client: its connection ends, none is let in for a while); the thread
    that lets them in again (join it)."""
    database = dsn.split("dbname=")[1].split(" ")[0]
    terminate(dsn, "true")  # the callers are idle: nothing reconnects in between
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')

    def back() -> None:
        time.sleep(seconds)
        with psycopg.connect(postgres_dsn, autocommit=True) as connection:
            connection.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')

    thread = threading.Thread(target=back)
    thread.start()
    return thread


def test_two_hosts_share_one_dense_log_and_the_checkpoint_signer_moves(
    dsn: str, tmp_path: Path
) -> None:
    ring_a, ring_b = host_ring(tmp_path, "a"), host_ring(tmp_path, "b")
    a, b = open_host(dsn, tmp_path, ring_a, "a"), open_host(dsn, tmp_path, ring_b, "b")
    acknowledged: dict[str, list[int]] = {}
    appenders = [
        threading.Thread(
            target=lambda n=n, log=log: acknowledged.update({n: append_from_threads(log, 4, 30)})
        )
        for n, log in (("a", a), ("b", b))
    ]
    for thread in appenders:
        thread.start()
    for thread in appenders:
        thread.join()
    assert a.checkpoint_now() == a.size  # the first to ask takes the sequencer role
    acknowledged["b1"] = append_from_threads(b, 1, 5)
    with pytest.raises(AuditError, match="no checkpoint"):
        b.checkpoint_now(timeout=1.5)  # b is not the sequencer: b signs nothing
    # Its sequencer session ends (a host or a failover): the other host takes over.
    assert terminate(dsn, f"pid IN (SELECT pid FROM pg_locks WHERE objid = {SEQUENCER_LOCK})")
    acknowledged["b2"] = append_from_threads(b, 2, 10)
    assert b.checkpoint_now() == b.size
    acknowledged["a2"] = append_from_threads(a, 2, 10)
    b.close()  # the sequencer's final checkpoint; its lock goes with its connection
    acknowledged["a3"] = append_from_threads(a, 1, 5)
    assert a.checkpoint_now() == 290
    a.close()

    every = sorted(seq for seqs in acknowledged.values() for seq in seqs)
    assert every == list(range(1, 291))  # each acknowledged once, dense, none lost
    rows = stored(dsn)
    assert [seq for seq, _ in rows] == every
    leaves = b"".join(merkle.leaf_hash(entry) for _, entry in rows)
    assert leaf_file(tmp_path, "a") == leaves
    assert leaf_file(tmp_path, "b") == leaves[: 285 * 32]  # b stopped before a's last five
    a_key, b_key = "securecore-signing-a-v1", "securecore-signing-b-v1"
    assert signers(dsn) == [f"{ORIGIN}/{a_key}", f"{ORIGIN}/{b_key}", f"{ORIGIN}/{a_key}"]

    both = {**signing_public_keys(ring_a), **signing_public_keys(ring_b)}
    store = PostgresAuditStore(dsn)
    try:
        for host in ("a", "b"):
            result = verify_log(store, tmp_path / host / "witness", both)
            if host == "a":
                assert result.ok and result.size == 290 and result.checkpoints >= 3, result
            else:  # b's leaf file ends where b stopped: it cannot vouch for a's later ones
                assert not result.ok and "not in the witness" in result.problem, result
        one_key = verify_log(store, tmp_path / "a" / "witness", signing_public_keys(ring_a))
        assert not one_key.ok and "no signature from a known key" in one_key.problem
        notes = store.checkpoints()
    finally:
        store.close()

    # A witness pinning both keys cosigns the alternating signers' checkpoints: each
    # one a consistent extension of the last (the proofs from a host's leaf file).
    leaves = read_leaves(tmp_path / "a" / "witness" / "leaves", 290)
    for pinned, refused in (({ORIGIN: both}, None), ({ORIGIN: signing_public_keys(ring_a)}, 403)):
        state = tmp_path / f"witness-{len(pinned[ORIGIN])}"
        state.mkdir(mode=0o700)
        witness = Witness("w.test", ed25519.Ed25519PrivateKey.generate(), state, pinned)
        held, answers = 0, []
        for size, note in notes:
            proof = merkle.consistency_proof(leaves[:size], held) if held else []
            answers.append(witness.add_checkpoint(add_checkpoint_body(held, proof, note)).status)
            held = size if answers[-1] == 200 else held
        if refused is None:
            assert answers == [200] * len(notes) and len(notes) >= 3
        else:  # b's checkpoints are refused where only a's key is pinned
            assert refused in answers


def test_a_host_reads_the_others_records_as_one_consistent_view(dsn: str) -> None:
    """Another host commits between the two statements of a read (the size, then the
    rows): the rows stop at the size read, or the reader would take the newer commit
    for records missing below it and stop its writer."""
    reader, writer = PostgresAuditStore(dsn), PostgresAuditStore(dsn)
    writer.append_sequenced(0, lambda newer: [(1, b"one")])

    class CommitBetween:
        def __init__(self, cursor: psycopg.Cursor) -> None:
            self.cursor, self.statements = cursor, 0

        def execute(self, *args: object) -> psycopg.Cursor:
            result = self.cursor.execute(*args)  # type: ignore[call-overload]
            self.statements += 1
            if self.statements == 1:
                writer.append_sequenced(1, lambda newer: [(2, b"two")])
            return result

        def fetchall(self) -> list:
            return self.cursor.fetchall()

    with reader._connection.cursor() as cursor:
        newer = reader._newer(CommitBetween(cursor), 0)  # type: ignore[arg-type]
    assert newer.size == 1 and newer.rows == [(1, b"one")]
    assert reader.newer(1).rows == [(2, b"two")]  # the next read takes it
    reader.close()
    writer.close()


def test_a_host_reopened_follows_what_the_other_wrote(dsn: str, tmp_path: Path) -> None:
    ring_a, ring_b = host_ring(tmp_path, "a"), host_ring(tmp_path, "b")
    a = open_host(dsn, tmp_path, ring_a, "a")
    b = open_host(dsn, tmp_path, ring_b, "b")
    append_from_threads(a, 2, 10)
    wait_for(lambda: b.size == 20)  # an idle host follows the store
    assert leaf_file(tmp_path, "b") == leaf_file(tmp_path, "a")
    assert b.append("bob", "login", "core", "success") == 21
    a.close()
    b.close()


def test_a_record_removed_or_rewritten_behind_the_hosts_is_detected(
    dsn: str, tmp_path: Path
) -> None:
    ring_a, ring_b = host_ring(tmp_path, "a"), host_ring(tmp_path, "b")
    a, b = open_host(dsn, tmp_path, ring_a, "a"), open_host(dsn, tmp_path, ring_b, "b")
    append_from_threads(a, 2, 20)
    append_from_threads(b, 2, 20)
    wait_for(lambda: a.size == b.size == 80)
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(
            "UPDATE audit_records SET entry = replace(convert_from(entry, 'UTF8'), "
            '\'"outcome":"success"\', \'"outcome":"failure"\')::bytea WHERE seq = 33'
        )
        connection.execute("DELETE FROM audit_records WHERE seq = 80")
    # The running hosts: a store that lost a record they saw stops the writer.
    with pytest.raises(AuditError, match="tampered"):
        a.append("mallory", "login", "core", "success")
    wait_for(lambda: b._failed is not None)
    with pytest.raises(AuditError, match="tampered"):
        b.append("mallory", "login", "core", "success")
    a.close()
    b.close()
    both = {**signing_public_keys(ring_a), **signing_public_keys(ring_b)}
    store = PostgresAuditStore(dsn)
    try:
        for host in ("a", "b"):
            result = verify_log(store, tmp_path / host / "witness", both)
            assert not result.ok and result.first_bad_seq == 33, result
            assert "differs from what was witnessed" in result.problem
    finally:
        store.close()
    # Reopened, each host refuses the shortened store.
    for host, ring in (("a", ring_a), ("b", ring_b)):
        with pytest.raises(AuditError, match="tampered"):
            open_host(dsn, tmp_path, ring, host)


def test_a_lost_connection_fails_no_append_and_records_nothing_twice(
    dsn: str, tmp_path: Path
) -> None:
    """The writer's connection cut inside a commit, three times: the batch in flight
    is committed on a new connection, and the appenders waiting meanwhile wait."""
    log = open_host(dsn, tmp_path, host_ring(tmp_path, "a"), "a")
    failures: list[AuditError] = []
    acknowledged: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            acknowledged.extend(append_from_threads(log, 4, 5, failures))

    def waiting_for_the_sequence() -> list[int]:
        with psycopg.connect(dsn) as connection:
            rows = connection.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
                "AND NOT granted",
                (SEQUENCE_LOCK,),
            ).fetchall()
        return [pid for (pid,) in rows]

    loader = threading.Thread(target=load)
    loader.start()
    try:
        for _ in range(3):  # the writer's connection is cut inside a commit, three times
            wait_for(lambda: log.size > 0)
            before = log.size
            with psycopg.connect(dsn, autocommit=True) as holder:
                # The test holds the sequence: the writer's commit waits in its transaction.
                holder.execute("SELECT pg_advisory_lock(%s)", (SEQUENCE_LOCK,))
                wait_for(waiting_for_the_sequence)
                terminate(dsn, f"pid IN ({', '.join(map(str, waiting_for_the_sequence()))})")
            wait_for(lambda before=before: log.size > before)  # writing again
            time.sleep(0.3)
    finally:
        stop.set()
        loader.join()
    assert failures == []
    # An idle connection cut (every session of the database) costs no record.
    terminate(dsn, "true")
    after = log.append("alice", "login", "core", "success")
    log.check()  # ready again
    log.checkpoint_now()
    log.close()
    rows = stored(dsn)
    seqs = [seq for seq, _ in rows]
    assert seqs == list(range(1, len(rows) + 1))
    assert sorted(acknowledged) == seqs[:-1] and after == seqs[-1]  # each once, none lost
    assert leaf_file(tmp_path, "a") == b"".join(merkle.leaf_hash(entry) for _, entry in rows)


class LostAnswerStore(PostgresAuditStore):
    """A real store whose next commit succeeds and whose answer is then lost: the worst
    moment of a failover for a writer (the commit is there, the writer cannot know)."""

    lose_next = False

    def append_sequenced(self, after, build):  # type: ignore[no-untyped-def]
        result = super().append_sequenced(after, build)
        if self.lose_next:
            self.lose_next = False
            self._connection.close()
            raise StoreUnavailableError("audit store: the server closed the connection")
        return result


class HangingStore(PostgresAuditStore):
    """A real store whose commits hang once `hang` is set, neither failing nor
    answering: what a partition that drops packets looks like to the writer."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.hang = threading.Event()
        self.release = threading.Event()

    def append_sequenced(self, after, build):  # type: ignore[no-untyped-def]
        if self.hang.is_set():
            self.release.wait(30)
        return super().append_sequenced(after, build)


def test_an_append_on_an_event_loop_gives_up_on_a_store_that_hangs(
    dsn: str, tmp_path: Path
) -> None:
    store = HangingStore(dsn)
    log = open_host(dsn, tmp_path, host_ring(tmp_path, "a"), "a", store)

    async def append(timeout: float) -> int:
        return await log.append_async("alice", "login", "core", "success", timeout=timeout)

    assert asyncio.run(append(5.0)) == 1
    store.hang.set()
    started = time.monotonic()
    with pytest.raises(AuditError, match=r"not durable within 1\.0 s"):
        asyncio.run(append(1.0))
    assert time.monotonic() - started < 3.0  # the request is answered, not held
    store.hang.clear()
    store.release.set()
    # The record the caller gave up on is still written once; nothing is lost or doubled.
    wait_for(lambda: len(stored(dsn)) == 2)
    assert asyncio.run(append(5.0)) == 3
    log.close()


def test_a_commit_whose_answer_was_lost_is_answered_once_not_written_twice(
    dsn: str, tmp_path: Path
) -> None:
    store = LostAnswerStore(dsn)
    log = open_host(dsn, tmp_path, host_ring(tmp_path, "a"), "a", store)
    assert log.append("alice", "login", "core", "success") == 1
    store.lose_next = True
    assert log.append("bob", "login", "core", "success") == 2  # committed before the loss
    assert log.append("carol", "login", "core", "success") == 3
    log.close()
    actors = [json.loads(entry)["actor"] for _, entry in stored(dsn)]
    assert actors == ["alice", "bob", "carol"]


def test_appends_wait_out_a_short_outage_and_fail_fast_in_a_long_one(
    dsn: str, tmp_path: Path, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(failover, "WAIT_SECONDS", 3.0)
    log = open_host(dsn, tmp_path, host_ring(tmp_path, "a"), "a")
    assert log.append("alice", "login", "core", "success") == 1
    # A switchover's length: the append waits and is written.
    returning = database_away(dsn, postgres_dsn, 1.5)
    started = time.monotonic()
    assert log.append("alice", "login", "core", "success") == 2
    assert time.monotonic() - started < 3.0
    returning.join()
    # Longer than the wait: failed after it, then at once.
    returning = database_away(dsn, postgres_dsn, 7.0)
    started = time.monotonic()
    with pytest.raises(AuditError, match="audit write failed"):
        log.append("alice", "login", "core", "success")
    assert 2.5 < time.monotonic() - started < 6.0
    with pytest.raises(AuditError, match="unavailable"):
        log.check()  # readiness: 503
    started = time.monotonic()
    with pytest.raises(AuditError, match="the audit store is unavailable"):
        log.append("alice", "login", "core", "success")
    assert time.monotonic() - started < 0.5  # at once, not another wait
    returning.join()
    wait_for(lambda: log._unavailable is None, seconds=15)
    assert log.append("alice", "login", "core", "success") == 3
    log.close()
    assert [seq for seq, _ in stored(dsn)] == [1, 2, 3]


def test_a_primary_turned_read_only_fails_appends_until_writes_are_taken_again(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(failover, "WAIT_SECONDS", 2.0)  # then appends fail
    log = open_host(dsn, tmp_path, host_ring(tmp_path, "a"), "a")
    assert log.append("alice", "login", "core", "success") == 1
    database = dsn.split("dbname=")[1].split(" ")[0]
    with psycopg.connect(dsn, autocommit=True) as connection:
        # What a demotion looks like to a client: its sessions end, new ones are read-only.
        connection.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    terminate(dsn, "true")
    with pytest.raises(AuditError):
        log.append("alice", "login", "core", "success")
    time.sleep(1.0)  # reconnecting meanwhile finds only read-only sessions
    with pytest.raises(AuditError, match="unavailable"):
        log.check()  # readiness: 503
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("SET default_transaction_read_only = off")
        connection.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
    wait_for(lambda: log._unavailable is None)
    log.check()
    assert log.append("alice", "login", "core", "success") == 2
    log.close()


def test_the_state_database_reconnects_after_a_lost_connection(dsn: str, postgres_dsn: str) -> None:
    state = PostgresState(dsn, "sessions")
    state.create("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)")
    state.execute("INSERT INTO t VALUES (?, ?)", (1, "one"))
    terminate(dsn, "true")
    assert state.execute("SELECT v FROM t WHERE k = ?", (1,)).fetchone() == ("one",)
    terminate(dsn, "true")
    with state.write_transaction():  # nothing was sent yet: a new connection takes it
        state.execute("INSERT INTO t VALUES (?, ?)", (2, "two"))
    terminate(dsn, "true")
    with pytest.raises(StateUnavailableError, match="outcome is unknown"):  # 503, not repeated
        state.execute("INSERT INTO t VALUES (?, ?)", (3, "three"))
    state.execute("INSERT INTO t VALUES (?, ?)", (3, "three"))  # the next use reconnects
    with pytest.raises(StateUnavailableError), state.write_transaction():
        state.execute("INSERT INTO t VALUES (?, ?)", (4, "four"))
        terminate(dsn, "true")  # cut inside the transaction: it is not retried
        state.execute("INSERT INTO t VALUES (?, ?)", (5, "five"))
    assert state.execute("SELECT count(*) FROM t").fetchone() == (3,)
    state.check_writable()
    # Its probe connection ended since (as a switchover ends them): a stale connection
    # is not an unwritable database, the probe asks again on a new one.
    terminate(dsn, "true")
    time.sleep(1.1)  # the answer is kept a second
    state.check_writable()
    database = dsn.split("dbname=")[1].split(" ")[0]
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        # The database goes away: its sessions end (the probe's own among them) and
        # no new one is let in.
        terminate(dsn, "true")
        connection.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        time.sleep(1.1)  # the answer is kept a second
        with pytest.raises(StateDatabaseError):
            state.check_writable()  # readiness: 503 while the database is away
        connection.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    time.sleep(1.1)
    state.check_writable()
    state.close()


def test_the_state_database_waits_out_a_switchover_and_fails_fast_in_a_longer_outage(
    dsn: str, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(failover, "WAIT_SECONDS", 3.0)
    state = PostgresState(dsn, "sessions")
    state.create("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)")
    state.execute("INSERT INTO t VALUES (?, ?)", (1, "one"))

    # A switchover: the request waits for the new primary, and is answered.
    returning = database_away(dsn, postgres_dsn, 1.5)
    started = time.monotonic()
    assert state.execute("SELECT v FROM t WHERE k = ?", (1,)).fetchone() == ("one",)
    assert 1.0 < time.monotonic() - started < 3.0
    returning.join()
    # Longer than the window: this request fails after it (503), the next ones at once.
    returning = database_away(dsn, postgres_dsn, 6.0)
    started = time.monotonic()
    with pytest.raises(StateUnavailableError, match="no server takes queries"):
        state.execute("SELECT v FROM t WHERE k = ?", (1,))
    assert 2.5 < time.monotonic() - started < 4.5
    started = time.monotonic()
    with pytest.raises(StateUnavailableError):
        state.execute("SELECT v FROM t WHERE k = ?", (1,))
    assert time.monotonic() - started < 1.0
    returning.join()
    assert state.execute("SELECT v FROM t WHERE k = ?", (1,)).fetchone() == ("one",)
    state.close()


def test_a_host_reopening_while_another_appends_keeps_its_leaf_file_equal_to_the_log(
    dsn: str, tmp_path: Path
) -> None:
    ring_a, ring_b = host_ring(tmp_path, "a"), host_ring(tmp_path, "b")
    a, b = open_host(dsn, tmp_path, ring_a, "a"), open_host(dsn, tmp_path, ring_b, "b")
    for n in range(3):
        a.append("admin/alice", "test.a", str(n), "success")
    a.close()  # a restarts (a rotation, an upgrade) while b serves on
    for n in range(5):
        b.append("admin/bob", "test.b", str(n), "success")
    raced = []

    class CommittedMeanwhile(PostgresAuditStore):
        """b commits again just after a has read the store to rebuild its tree."""

        def entries(self, after: int = 0):
            yield from super().entries(after)
            if not raced:
                raced.append(True)
                for n in range(2):
                    b.append("admin/bob", "test.b.meanwhile", str(n), "success")

    a = open_host(dsn, tmp_path, ring_a, "a", CommittedMeanwhile(dsn))
    a.append("admin/alice", "test.a.after", "x", "success")  # a follows b's records first
    b.close()
    a.close()
    # Every host's leaf file is the log's leaves, one per record, in order.
    expected = b"".join(hashlib.sha256(b"\x00" + entry).digest() for _, entry in stored(dsn))
    assert len(stored(dsn)) == 11
    assert leaf_file(tmp_path, "a") == expected
    assert leaf_file(tmp_path, "b") == expected


def test_a_host_verifies_the_log_while_its_leaf_file_has_not_yet_followed_the_others(
    dsn: str, tmp_path: Path
) -> None:
    ring_a, ring_b = host_ring(tmp_path, "a"), host_ring(tmp_path, "b")
    a, b = open_host(dsn, tmp_path, ring_a, "a"), open_host(dsn, tmp_path, ring_b, "b")
    a.append("admin/alice", "test.a", "1", "success")
    a.close()  # a's leaf file stops here, as it would for the second before it follows
    for n in range(3):
        b.append("admin/bob", "test.b", str(n), "success")
    b.close()
    keys = {**signing_public_keys(ring_a), **signing_public_keys(ring_b)}
    store = PostgresAuditStore(dsn)
    try:
        # A host of its own log: a record past its leaf file was put in behind it.
        alone = verify_log(store, tmp_path / "a" / "witness", keys)
        assert not alone.ok and "is not in the witness" in alone.problem
        # A cluster host: not yet followed; still checked against the checkpoints.
        followed = verify_log(store, tmp_path / "a" / "witness", keys, following=True)
        assert followed.ok, followed.problem
        assert followed.size == 4
    finally:
        store.close()


def cluster_config(dsn: str, name: str, pins: Path) -> Callable[[str], str]:
    """The edit that makes a development setup host NAME of a cluster on DSN: its own
    signing key name (the key made here), the shared origin and pinned keys file."""

    def edit(text: str) -> str:
        directory = pins.parent / name
        SoftwareKeys(directory / "keys").create_version(f"securecore-signing-{name}", "ec_p256")
        ring = KeyRing(SoftwareKeys(directory / "keys"), f"securecore-signing-{name}", "")
        pinned = json.loads(pins.read_text()) if pins.exists() else {ORIGIN: {}}
        ours = json.loads(origin_keys_document(ORIGIN, signing_public_keys(ring)))[ORIGIN]
        pins.write_text(json.dumps({ORIGIN: {**pinned[ORIGIN], **ours}}))
        text = text.replace(
            '[keys]\nbackend = "software"\n',
            f'[keys]\nbackend = "software"\nsigning_key = "securecore-signing-{name}"\n',
        )
        text = text.replace('origin = "securecore.localhost/audit"', f'origin = "{ORIGIN}"')
        text = text.replace('origin_keys = "origin-keys.json"', f'origin_keys = "{pins}"')
        text = text.replace(
            "[audit]\n", f'[audit]\nbackend = "postgresql"\ndsn = "{dsn}"\ncluster = true\n'
        )
        return text + f'\n[state]\nbackend = "postgresql"\ndsn = "{dsn}"\n'

    return edit


def test_two_servers_on_one_database_write_one_verifying_log(
    dsn: str, postgres_dsn: str, tmp_path: Path
) -> None:
    # A multi-host dsn that picks the primary (here the same server twice).
    sockets = dsn.split("host=")[1].split(" ")[0]
    multi = dsn.replace(f"host={sockets}", f"host={sockets},{sockets}")
    multi += " target_session_attrs=read-write"
    database = dsn.split("dbname=")[1].split(" ")[0]
    pins = tmp_path / "origin-keys.json"
    with (
        dev_server(tmp_path / "a", edit_config=cluster_config(multi, "a", pins)) as a,
        dev_server(tmp_path / "b", edit_config=cluster_config(multi, "b", pins)) as b,
    ):
        for _ in range(10):  # requests spread over both hosts
            assert call(a, "GET", "/v1/whoami", source="127.0.0.5")[0] == 200
            assert call(b, "GET", "/v1/whoami", source="127.0.0.6")[0] == 200
        assert get(a, "/readyz")[0] == get(b, "/readyz")[0] == 200
        # The database goes away (a failover's window): not ready, then ready again.
        with psycopg.connect(postgres_dsn, autocommit=True) as connection:
            connection.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
            wait_for(lambda: get(a, "/readyz")[0] == 503, 20)
            connection.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        wait_for(lambda: get(a, "/readyz")[0] == get(b, "/readyz")[0] == 200, 20)
        for _ in range(5):
            assert call(a, "GET", "/v1/whoami", source="127.0.0.5")[0] == 200
            assert call(b, "GET", "/v1/whoami", source="127.0.0.6")[0] == 200
        a["process"].send_signal(signal.SIGTERM)
        a["process"].wait(timeout=30)
        b["process"].send_signal(signal.SIGTERM)
        b["process"].wait(timeout=30)
    rows = stored(dsn)
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
    text = b"\n".join(entry for _, entry in rows)
    assert text.count(b'"source":"127.0.0.5"') == text.count(b'"source":"127.0.0.6"') == 15
    assert len(signers(dsn)) >= 1
    for server in (a, b):
        verified = admin(server, "audit", "verify")
        assert verified.stdout.startswith(f"audit log OK: {len(rows)} records"), verified.stdout
        # One host signed the checkpoint that covers record 1: both prove it.
        assert json.loads(admin(server, "audit", "prove", "1").stdout)["seq"] == 1


def witnessed_host(base: Path, name: str, dsn: str, dev: Path, url: str) -> Path:
    """The configuration of host NAME of a cluster that pushes to the witness at URL."""
    host_ring(base, name)
    directory = base / name
    (directory / "hmac").write_bytes(b"k" * 32)
    (directory / "hmac").chmod(0o600)
    config = directory / "config.toml"
    config.write_text(
        f'[service]\ndata_dir = "{directory}/data"\n'
        f'[tls]\npolicy = "{dev}/tls/core-policy.json"\n'
        f'[keys]\nbackend = "software"\nsigning_key = "securecore-signing-{name}"\n'
        f'[keys.software]\ndirectory = "{directory}/keys"\n'
        f'[audit]\nbackend = "postgresql"\ndsn = "{dsn}"\ncluster = true\n'
        f'database = "{directory}/unused.db"\nwitness_dir = "{directory}/witness"\n'
        f'origin = "{ORIGIN}"\nhmac_key_file = "{directory}/hmac"\n'
        "checkpoint_every = 1000000\ncheckpoint_interval_seconds = 3600\n"
        f'origin_keys = "{dev}/origin-keys.json"\nwitness_keys = "{dev}/witness.vkeys"\n'
        f'witnesses = {{ "w.test" = "{url}" }}\n'
    )
    return config


@contextmanager
def witnessed_cluster(dsn: str, tmp_path: Path) -> Iterator[tuple[dict, dict, Path]]:
    """Hosts a and b of a cluster on DSN, pushing to one real witness: their configuration
    files, their key rings, and the file in which the witness holds its checkpoint."""
    dev = tmp_path / "dev"  # its development PKI: the core certificate, the witness's TLS
    securecore_lab("init", str(dev), "--software-keys")
    core_policy(dev)
    (dev / "witness.vkeys").touch()  # the witness's key, once it has made one
    configs = {}
    for name in ("a", "b"):
        configs[name] = witnessed_host(tmp_path, name, dsn, dev, "https://127.0.0.1:1")
    rings = {name: open_key_ring(configuration.load(path)) for name, path in configs.items()}
    pins = {kid: key for ring in rings.values() for kid, key in signing_public_keys(ring).items()}
    (dev / "origin-keys.json").write_text(origin_keys_document(ORIGIN, pins))
    processes: list[subprocess.Popen] = []
    try:
        vkey, url, state = start_witness(tmp_path / "w", dev, "w.test", processes)
        (dev / "witness.vkeys").write_text(vkey + "\n")
        for path in configs.values():
            path.write_text(path.read_text().replace("https://127.0.0.1:1", url))
        yield configs, rings, state / "origins" / hashlib.sha256(ORIGIN.encode()).hexdigest()
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def witness_holds(held: Path, size: int) -> None:
    wait_for(lambda: held.exists() and parse_checkpoint(held.read_text())[0].size == size)


def test_a_witness_cosigns_the_checkpoints_of_whichever_host_signs(
    dsn: str, tmp_path: Path
) -> None:
    with witnessed_cluster(dsn, tmp_path) as (configs, rings, held):
        logs = {
            name: open_audit_log(configuration.load(path), rings[name])
            for name, path in configs.items()
        }
        append_from_threads(logs["a"], 2, 5)
        assert logs["a"].checkpoint_now() == 10
        witness_holds(held, 10)
        terminate(dsn, f"pid IN (SELECT pid FROM pg_locks WHERE objid = {SEQUENCER_LOCK})")
        append_from_threads(logs["b"], 2, 5)
        assert logs["b"].checkpoint_now() == 20
        witness_holds(held, 20)  # b learnt the size a's checkpoint left there, and proved from it
        logs["b"].close()
        append_from_threads(logs["a"], 1, 5)
        assert logs["a"].checkpoint_now() == 25
        witness_holds(held, 25)
        logs["a"].close()
        assert signers(dsn) == [
            f"{ORIGIN}/securecore-signing-a-v1",
            f"{ORIGIN}/securecore-signing-b-v1",
            f"{ORIGIN}/securecore-signing-a-v1",
        ]
        # Each host's cosigned notes are in the shared database, whichever host signed.
        assert {10, 20, 25} <= {size for size, _ in cosigned(dsn)}
        result, problems = anchored_verification(configuration.load(configs["a"]), rings["a"])
        assert result.ok and result.witnessed == 25 and not problems, (result, problems)


def cosigned(dsn: str) -> list[tuple[int, str]]:
    store = PostgresAuditStore(dsn)
    try:
        return store.cosigned()
    finally:
        store.close()


def test_cosigned_checkpoints_reach_the_shared_store_across_a_failover(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "securecore.audit")
    cut: list[int] = []

    class CutAtTheFirstNote(PostgresAuditStore):
        """The writer's connection ends (a failover) as it stores its first cosigned note."""

        def add_cosigned(self, size: int, note: str) -> None:
            if not cut:
                cut.append(self._connection.info.backend_pid)
                terminate(dsn, f"pid = {cut[0]}")
                wait_for(lambda: not alive(dsn, cut[0]))
            super().add_cosigned(size, note)

    monkeypatch.setattr(factory, "open_store", lambda config: CutAtTheFirstNote(dsn))
    with witnessed_cluster(dsn, tmp_path) as (configs, rings, held):
        config = configuration.load(configs["a"])
        log = open_audit_log(config, rings["a"])
        append_from_threads(log, 2, 5)
        assert log.checkpoint_now() == 10
        witness_holds(held, 10)
        # Within seconds of the cosignature, after the writer reconnected: the note was
        # kept for the next round, not lost, and the writer carries on.
        wait_for(lambda: 10 in dict(cosigned(dsn)))
        assert cut and "audit store unavailable, reconnecting" in caplog.text
        pins = load_origin_keys(tmp_path / "dev" / "origin-keys.json")[ORIGIN]
        note = dict(cosigned(dsn))[10]
        _, names = witnessed_checkpoint(note, pins, witness_keys(config), ORIGIN)
        assert names == ["w.test"]
        log.check()
        assert log.append("alice", "login", "core", "success") == 11
        log.close()
