"""The append-only audit log: group commit, external witness, signed checkpoints, verify.

Append path (one writer thread; callers wait until their record is durable,
blocking in `append` or awaiting `append_async` on an event loop):
  1. the records are committed to the store in one transaction (fsynced);
  2. the batch's leaf hashes are appended to the local leaf file and fsynced;
  3. callers are answered with their sequence numbers.
Every `checkpoint_every` records or `checkpoint_interval` seconds the tree
head is signed (C2SP signed note), written to the store and the witness
directory, and handed to `on_checkpoint` - the WitnessPusher, which sends it
to the witnesses on other hosts (securecore.audit.witness). Rewriting the
database alone is detected by the local leaf file (which names the first bad
record exactly); rewriting everything on this host is detected against the
checkpoints the witnesses cosigned, which the service user cannot change.

The cosigned notes the pusher receives come back through `record_cosigned`,
which only queues them; the writer stores them (AuditStore.add_cosigned) in
its rounds, after the round's appenders are answered. The witnesses keep
only their newest checkpoint, and the copies in the witness directory go
with the host: in the database, the backups carry the anchors, and a log
restored from one is proved against a checkpoint a witness cosigned within
it (verify_log's RESTORED), not only against the origin's own signatures.

Recovery never shortens anything: the leaf file is only ever extended to the
committed records (a crash between steps 1 and 2); a leaf file, a signed
checkpoint or a witnessed checkpoint that knows MORE than the database means
records were removed, and the log refuses to open (AuditError) instead of
signing new checkpoints over the gap.

Cluster mode (`cluster=True`, a PostgreSQL store shared by several hosts,
each with its own AuditLog, key and witness directory): the database numbers
the records - each batch is numbered and committed under the store's
sequencing lock (AuditStore.append_sequenced), so appenders on any host learn
their sequence number once their batch is durable, and the sequence stays
dense. Each host extends its tree and leaf file from the store, records of
the other hosts included (after each commit, and every FOLLOW_SECONDS when
idle), with the same refusal: a store that holds fewer records than this
host has seen, or a gap, stops the writer. Only the host that holds the
store's sequencer lock signs checkpoints, with its own key; the others take
the role when its session ends. A failover (StoreUnavailableError) fails the batch
under way and the appenders waiting meanwhile, and the writer reconnects
with back-off and re-reads the store: the tree follows what was committed,
never a guess about a commit whose answer was lost.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime
import heapq
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from securecore.audit import chunks, merkle
from securecore.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    sign_checkpoint,
    verify_checkpoint,
)
from securecore.audit.record import Record, entry_parts, join_entry, protect_details
from securecore.audit.store import AuditStore, Newer, StoreUnavailableError
from securecore.audit.witness import atomic_write
from securecore.errors import SecureCoreError
from securecore.keys.base import KeyRing
from securecore.storage import failover

LEAVES_FILE = "leaves"
CHECKPOINT_DIR = "checkpoints"
FOLLOW_SECONDS = 1.0  # cluster mode: how often an idle host reads the others' records
RECONNECT_SECONDS = (0.1, 1.0)  # cluster mode: the back-off after a failover
# Cosigned notes waiting for the writer: one a size (the newest), at most this many
# sizes (the smallest dropped first: the newest anchor covers the most records).
COSIGNED_QUEUED = 1024
log = logging.getLogger("securecore.audit")


class AuditError(SecureCoreError):
    """The audit log cannot accept records (the service must not answer without them)."""


class _Batch:
    """Records that commit together, and what their appenders wait on."""

    __slots__ = ("done", "error", "first", "records", "rows", "waiters")

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []  # prepared entries (_prepare)
        self.first = 0  # the first record's sequence number, once committed
        # Cluster mode: the rows of the last attempt to commit it (a commit whose answer
        # was lost is looked for in the store by these).
        self.rows: list[tuple[int, bytes]] = []
        self.done = threading.Event()
        self.error: BaseException | None = None
        # Appenders on event loops: one wake-up per loop and batch, not per record.
        self.waiters: dict[asyncio.AbstractEventLoop, _LoopWaiters] = {}

    def fail(self, error: BaseException) -> None:
        """Answer every appender of the batch with ERROR."""
        self.error = error
        self.settle()

    def settle(self) -> None:
        self.done.set()
        for loop, waiters in self.waiters.items():
            # A closed loop raises RuntimeError: nobody there is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(waiters.settle, self.error)


class _LoopWaiters:
    """The appenders of one batch on one event loop, and their one deadline timer.

    A timer per batch and loop, not per record: asyncio.wait_for and shield
    around every append cost the loop more than the rest of the append. The
    deadlines are a heap, so that a store that hangs while a batch grows costs
    each appender one push and one pop, not a scan of all the others. Used on
    its loop's thread only (append_async adds to it, settle runs there).
    """

    __slots__ = ("deadlines", "futures", "loop", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.futures: list[asyncio.Future[None]] = []
        # (deadline, number, future, timeout): the number keeps futures out of comparisons.
        self.deadlines: list[tuple[float, int, asyncio.Future[None], float]] = []
        self.timer: asyncio.TimerHandle | None = None

    def add(self, future: asyncio.Future[None], timeout: float | None) -> None:
        self.futures.append(future)
        if timeout is None:  # no deadline: wait as long as the writer takes
            return
        deadline = self.loop.time() + timeout
        heapq.heappush(self.deadlines, (deadline, len(self.futures), future, timeout))
        if self.timer is None or deadline < self.timer.when():
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """Fail the appenders whose deadline has passed; wait on for the others."""
        self.timer, now = None, self.loop.time()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, future, timeout = heapq.heappop(self.deadlines)
            if not future.done():
                message = f"an audit record was not durable within {timeout} s"
                future.set_exception(AuditError(message))
        if self.deadlines:
            self._arm(self.deadlines[0][0])

    def settle(self, error: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for future in self.futures:
            if future.done():  # timed out, or the awaiting task was cancelled
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(AuditError(f"audit write failed: {error}"))


class AuditLog:
    def __init__(
        self,
        store: AuditStore,
        ring: KeyRing,
        witness_dir: str | Path,
        *,
        origin: str,
        hmac_key: bytes,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 10.0,
        on_checkpoint: Callable[[int, str], None] | None = None,
        anchor: Callable[[], Checkpoint | None] | None = None,
        checkpoint_key: Callable[[], str | None] | None = None,
        cluster: bool = False,
    ) -> None:
        self.store, self.ring, self.origin = store, ring, origin
        self.cluster = cluster
        # Which key version signs the next checkpoint (None: the newest); asked
        # for each one (securecore.audit.factory.published_checkpoint_key).
        self.checkpoint_key = checkpoint_key
        self.on_checkpoint = on_checkpoint
        self.witness_pusher: Any = None  # closed with the log (securecore.audit.factory)
        self.hmac_key = hmac_key
        self.checkpoint_every, self.checkpoint_interval = checkpoint_every, checkpoint_interval
        self.witness = Path(witness_dir)
        (self.witness / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        self._leaves_path = self.witness / LEAVES_FILE
        self._tree = merkle.CompactRange()
        self._recover(anchor() if anchor is not None else None)
        self._last_checkpoint_size = max((s for s, _ in store.checkpoints()), default=0)
        self._last_checkpoint_time = time.monotonic()
        # Appenders take a sequence number and add their record to the open
        # batch under the lock, then wait on that batch's event: one wake-up
        # per record when its group commit is durable, and none before.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._durable = threading.Condition(self._lock)
        self._open = _Batch()
        self._accepted = self._tree.size  # records accepted so far (one writer)
        self._checkpoint_wanted = 0
        self._checkpointed = self._last_checkpoint_size
        self._closing = False
        self._poked = False  # cluster mode: checkpoint_now wakes the writer
        self._cosigned: dict[int, str] = {}  # cosigned notes not yet in the store, by size
        self._failed: BaseException | None = None
        self._unavailable: BaseException | None = None  # cluster mode: a failover
        # Cluster mode: the store has been away longer than failover.WAIT_SECONDS:
        # appends fail at once until it is back.
        self._failing_fast: BaseException | None = None
        self._failure_callbacks: list[Callable[[BaseException], None]] = []
        run = self._run_cluster if cluster else self._run
        self._writer = threading.Thread(target=run, name="audit-writer", daemon=True)
        self._writer.start()

    # --- start-up -------------------------------------------------------------

    def _recover(self, anchor: Checkpoint | None = None) -> None:
        """Rebuild the tree from the store; refuse a store that lost what others saw.

        ANCHOR is the newest checkpoint a witness cosigned: the store must hold
        at least its records, with the same tree.
        """
        # Read before the records: a checkpoint covers committed records only, so
        # one another host signs while this one reads cannot look like a removal.
        signed = max((s for s, _ in self.store.checkpoints()), default=0)
        witnessed = self._leaves_path.stat().st_size // 32 if self._leaves_path.exists() else 0
        size = 0
        anchored_root = None
        # The leaf hashes the leaf file lacks, from this one reading of the store: in
        # cluster mode other hosts go on appending, and a second reading would hold
        # records the tree does not (their leaves would then be written twice).
        missing: list[bytes] = []
        for seq, entry in self.store.entries():
            size += 1
            if seq != size:
                raise AuditError(f"audit store: record {size} is missing (found {seq})")
            leaf = merkle.leaf_hash(entry)
            self._tree.append(leaf)
            if size > witnessed:
                missing.append(leaf)
            if anchor is not None and size == anchor.size:
                anchored_root = self._tree.root()
        local = max(
            (int(p.name) for p in (self.witness / CHECKPOINT_DIR).glob("[0-9]*")), default=0
        )
        for what, known in (
            (f"the leaf file {self._leaves_path}", witnessed),
            ("a signed checkpoint in the store", signed),
            (f"a signed checkpoint in {self.witness / CHECKPOINT_DIR}", local),
            ("a witness's cosigned checkpoint", anchor.size if anchor else 0),
        ):
            if known > size:
                # Records are committed before their leaf hashes are written, so
                # nothing but a removal makes these know more than the store.
                # Shortening them to match would hide it: refuse instead.
                raise AuditError(
                    f"audit log tampered with: {what} covers {known} records, the store holds "
                    f"{size} (records {size + 1}..{known} were removed or the store was "
                    "restored); the log is not opened and nothing is rewritten - run "
                    "`securecore audit verify` and restore from a verified backup"
                )
        if anchor is not None and anchor.size and anchored_root != anchor.root:
            raise AuditError(
                f"audit log tampered with: the tree of the first {anchor.size} records is not "
                "the one a witness cosigned; the log is not opened - run `securecore audit "
                "verify` and restore from a verified backup"
            )
        if missing:
            # A crash after the commit, before the leaf hashes were written (or, in
            # cluster mode, records other hosts appended while this one was away).
            with self._leaves_path.open("ab") as handle:
                handle.write(b"".join(missing))
                handle.flush()
                os.fsync(handle.fileno())
        self._leaves = self._leaves_path.open("ab")

    # --- appending ----------------------------------------------------------------

    def append(
        self,
        actor: str,
        action: str,
        target: str,
        outcome: str,
        details: dict[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> int:
        """Append a record; returns its sequence number once it is durable."""
        index, batch = self._enqueue(self._prepare(actor, action, target, outcome, details))
        if not batch.done.wait(timeout):
            raise AuditError(f"an audit record was not durable within {timeout} s")
        if batch.error is not None:
            raise AuditError(f"audit write failed: {batch.error}")
        return batch.first + index

    async def append_async(
        self,
        actor: str,
        action: str,
        target: str,
        outcome: str,
        details: dict[str, Any] | None = None,
        timeout: float | None = 30.0,
    ) -> int:
        """`append` for an event loop: the loop goes on while the record becomes durable.

        Bounded like `append`: a store that hangs without failing (a network
        partition that drops packets) must not hold a request for ever (TIMEOUT
        None: as long as the writer takes).
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        parts = self._prepare(actor, action, target, outcome, details)
        # A timeout or a cancelled request leaves the record in its batch: it is
        # written all the same (the caller only stops waiting for it).
        index, batch = self._enqueue(parts, future, timeout)
        await future
        return batch.first + index

    def _prepare(
        self, actor: str, action: str, target: str, outcome: str, details: dict[str, Any] | None
    ) -> tuple[bytes, bytes]:
        """The record's entry without seq and timestamp (record.entry_parts), secrets
        protected.

        Whatever a request put in them, a record that cannot be encoded fails
        its own caller here, before it has a sequence number: the writer
        thread only ever sees records that encode, so no input can stop it.
        """
        try:
            for name, value in (
                ("actor", actor),
                ("action", action),
                ("target", target),
                ("outcome", outcome),
            ):
                if not isinstance(value, str):
                    raise TypeError(f"{name} must be a string, not {type(value).__name__}")
            protected = protect_details(details or {}, self.hmac_key)
            return entry_parts(actor, action, target, outcome, protected)
        except (TypeError, ValueError, RecursionError) as error:
            message = f"an audit record that cannot be encoded is refused: {error}"
            raise AuditError(message) from error

    def _enqueue(
        self,
        parts: tuple[bytes, bytes],
        future: asyncio.Future[None] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, _Batch]:
        """Add PARTS (a prepared entry) to the open batch (and FUTURE, failed after
        TIMEOUT seconds, to its waiters on its loop); their index in it.

        The sequence number is the batch's first (known once it is committed)
        plus the index: the writer numbers a batch when it commits it.
        """
        with self._lock:
            self._raise_if_stopped()
            if self._failing_fast is not None:  # the store is away beyond the failover wait
                raise AuditError(f"the audit store is unavailable: {self._failing_fast}")
            self._accepted += 1
            batch = self._open
            batch.records.append(parts)
            # Under the lock: another appender may add to the batch right after.
            index = len(batch.records) - 1
            if future is not None:
                loop = future.get_loop()
                waiters = batch.waiters.get(loop)
                if waiters is None:
                    waiters = batch.waiters[loop] = _LoopWaiters(loop)
                waiters.add(future, timeout)
            if index == 0:
                self._work.notify()
        return index, batch

    @property
    def size(self) -> int:
        """Records committed so far."""
        return self._tree.size

    @property
    def uncheckpointed(self) -> int:
        """Committed records that no signed checkpoint covers yet (the audit lag)."""
        # Cluster mode: a host may learn of a checkpoint before its records.
        return max(0, self._tree.size - self._last_checkpoint_size)

    def latest_checkpoint(self) -> str | None:
        """The newest signed checkpoint (C2SP signed note), if any."""
        checkpoints = self.store.checkpoints()
        return checkpoints[-1][1] if checkpoints else None

    def checkpoint_now(self, timeout: float = 30.0) -> int:
        """Sign a checkpoint of everything appended so far; returns its tree size.

        Cluster mode: of everything this host has seen committed; a host that
        is not the sequencer waits for the sequencer's next checkpoint."""
        with self._lock:
            self._raise_if_stopped()
            wanted = self._tree.size if self.cluster else self._accepted
            self._checkpoint_wanted = max(self._checkpoint_wanted, wanted)
            self._poked = True
            self._work.notify()
            deadline = time.monotonic() + timeout
            while self._checkpointed < wanted:
                self._raise_if_stopped()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AuditError(f"no checkpoint of size {wanted} within {timeout} s")
                self._durable.wait(remaining)
            return self._checkpointed

    def _raise_if_stopped(self) -> None:
        if self._closing:
            raise AuditError("the audit log is closed")
        if self._failed is not None:
            raise AuditError(f"the audit log stopped after an error: {self._failed}")

    def check(self) -> None:
        """Raise AuditError unless the writer is running and takes records (readiness)."""
        with self._lock:
            self._raise_if_stopped()
            if self._unavailable is not None:
                raise AuditError(f"the audit store is unavailable: {self._unavailable}")
        if not self._writer.is_alive():
            raise AuditError("the audit log writer is not running")

    def on_failure(self, callback: Callable[[BaseException], None]) -> None:
        """Call CALLBACK(error) from the writer once it has stopped after an error
        (at once if it already has): the service must then stop answering."""
        with self._lock:
            failed = self._failed
            if failed is None:
                self._failure_callbacks.append(callback)
        if failed is not None:
            callback(failed)

    def record_cosigned(self, size: int, note: str) -> None:
        """Queue NOTE, the checkpoint of SIZE records with every cosignature so far, for
        the writer to store (the witness pusher's thread calls this: it never uses the
        store itself). Never raises; a newer note of the same size replaces the queued one."""
        with self._lock:
            self._cosigned[size] = note
            while len(self._cosigned) > COSIGNED_QUEUED:
                dropped = min(self._cosigned)
                del self._cosigned[dropped]
                log.warning("cosigned checkpoint %d not stored: too many queued", dropped)
            self._work.notify()

    def _write_cosigned(self) -> None:
        """Store the queued cosigned notes (the writer's thread, or close's once it is gone).
        A note is dequeued once stored: one that fails (a failover) waits for the next
        round, and one replaced meanwhile by a newer note of its size stays queued."""
        with self._lock:
            queued = sorted(self._cosigned.items())
        for size, note in queued:
            self.store.add_cosigned(size, note)
            with self._lock:
                if self._cosigned.get(size) is note:
                    del self._cosigned[size]

    def _has_work(self) -> bool:
        return bool(
            self._open.records
            or self._closing
            or self._checkpoint_wanted > self._checkpointed
            or self._cosigned
        )

    def _run(self) -> None:
        batch: _Batch | None = None
        try:
            while True:
                with self._lock:
                    while not self._has_work():
                        if self._tree.size == self._last_checkpoint_size:
                            self._work.wait()  # nothing to do until someone appends
                            continue
                        since = time.monotonic() - self._last_checkpoint_time
                        if since >= self.checkpoint_interval:
                            break  # records wait for their time-based checkpoint
                        self._work.wait(self.checkpoint_interval - since)
                    batch, self._open = self._open, _Batch()
                    closing = self._closing
                    forced = self._checkpoint_wanted > self._checkpointed
                if batch.records:
                    self._commit(batch)
                self._maybe_checkpoint(force=closing or forced)
                batch.settle()
                batch = None
                self._write_cosigned()  # its appenders are answered: no request waits for it
                if self._round_done(closing):
                    return
        except BaseException as error:  # appenders, and the service, must see every failure
            self._stop_after(error, batch)

    def _round_done(self, closing: bool) -> bool:
        """After a writer round: wake checkpoint_now's waiters; whether to stop."""
        with self._lock:
            self._checkpointed = self._last_checkpoint_size
            self._durable.notify_all()
            return closing and not self._open.records

    def _stop_after(self, error: BaseException, batch: _Batch | None) -> None:
        """The writer stops for good: every waiting and later appender fails (no
        request is answered without its record), and the service is told."""
        with self._lock:
            self._failed = error
            for failed in (batch, self._open):
                if failed is not None:
                    failed.fail(error)
            self._durable.notify_all()
            callbacks = list(self._failure_callbacks)
        log.critical("the audit log writer stopped: %s", error, exc_info=error)
        for callback in callbacks:
            try:
                callback(error)
            except Exception:  # one broken callback must not keep the others from running
                log.exception("audit failure callback %r failed", callback)

    @staticmethod
    def _entries(batch: _Batch, first: int) -> list[tuple[int, bytes]]:
        """BATCH's (seq, entry) rows, numbered from FIRST."""
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
        # The parts encoded (_prepare): only I/O can fail here.
        return [
            (seq, join_entry(parts, seq, now)) for seq, parts in enumerate(batch.records, first)
        ]

    def _commit(self, batch: _Batch) -> None:
        rows = self._entries(batch, self._tree.size + 1)
        # Store first: the leaf file never knows a record the store does not
        # (recovery treats that as a removal, see _recover).
        self.store.append_batch(rows)
        batch.first = rows[0][0]
        self._extend(rows)

    def _extend(self, rows: Sequence[tuple[int, bytes]]) -> None:
        """Add committed ROWS to the leaf file (fsynced) and the tree."""
        leaves = [merkle.leaf_hash(entry) for _, entry in rows]
        self._leaves.write(b"".join(leaves))
        self._leaves.flush()
        os.fsync(self._leaves.fileno())
        for leaf in leaves:
            self._tree.append(leaf)

    # --- cluster mode: the database numbers the records ----------------------------

    def _run_cluster(self) -> None:
        batch: _Batch | None = None
        follow = max(0.05, min(FOLLOW_SECONDS, self.checkpoint_interval))
        try:
            while True:
                with self._lock:
                    deadline = time.monotonic() + follow
                    while not (
                        self._open.records or self._closing or self._poked or self._cosigned
                    ):
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._work.wait(remaining)
                    batch, self._open = self._open, _Batch()
                    closing, self._poked = self._closing, False
                    forced = closing or self._checkpoint_wanted > self._checkpointed
                try:
                    if batch.records:
                        self._commit_sequenced(batch)
                    else:
                        self._follow(self.store.newer(self._tree.size))
                    batch.settle()  # durable: the checkpoint is not theirs to wait for
                    batch = None
                    self._cluster_checkpoint(forced)
                    self._write_cosigned()  # a failover keeps what is not stored queued
                except StoreUnavailableError as error:
                    # The batch in flight, if any: committed or not, nobody knows yet.
                    unknown, batch = batch, None
                    if not self._reconnect(error, unknown):
                        return  # closed while the store was away
                    continue
                if self._round_done(closing):
                    return
        except BaseException as error:  # appenders, and the service, must see every failure
            self._stop_after(error, batch)

    def _commit_sequenced(self, batch: _Batch) -> None:
        def build(newer: Newer) -> list[tuple[int, bytes]]:
            self._check_newer(newer)  # raising here rolls the batch back
            batch.rows = self._entries(batch, newer.size + 1)
            return batch.rows

        newer, rows = self.store.append_sequenced(self._tree.size, build)
        batch.first = rows[0][0]
        self._follow(newer)
        self._extend(rows)

    def _check_newer(self, newer: Newer) -> None:
        """Refuse a store that lost records this host has seen, or has a gap."""
        if newer.size < self._tree.size:
            raise AuditError(
                f"audit log tampered with: this host's leaf file covers {self._tree.size} "
                f"records, the shared store holds {newer.size} (records were removed); "
                "the writer stops - run `securecore audit verify`"
            )
        for expected, (seq, _) in enumerate(newer.rows, self._tree.size + 1):
            if seq != expected:
                raise AuditError(f"audit store: record {expected} is missing (found {seq})")
        if self._tree.size + len(newer.rows) != newer.size:
            raise AuditError(f"audit store: records up to {newer.size} are not all there")

    def _follow(self, newer: Newer) -> None:
        """Take what other hosts committed (and checkpointed) into the tree and leaf file."""
        self._check_newer(newer)
        self._extend(newer.rows)
        if newer.checkpointed > self._last_checkpoint_size:
            self._last_checkpoint_size = newer.checkpointed
            self._last_checkpoint_time = time.monotonic()

    def _cluster_checkpoint(self, forced: bool) -> None:
        """Sign a checkpoint when one is due and this host is the sequencer; another
        host whose turn it is finds it due as well and takes the role if it is free."""
        size = self._tree.size
        if size <= self._last_checkpoint_size:
            return
        due = forced or (
            size - self._last_checkpoint_size >= self.checkpoint_every
            or time.monotonic() - self._last_checkpoint_time >= self.checkpoint_interval
        )
        if due and self.store.is_sequencer():
            self._write_checkpoint()

    def _reconnect(self, error: BaseException, unknown: _Batch | None) -> bool:
        """Reconnect after a failover, with back-off. For failover.WAIT_SECONDS appenders
        wait (a switchover is over by then: no request fails); after that they fail, and
        every later one at once, until the store is back. UNKNOWN, the batch whose commit
        was cut off, is looked for once the store is back: answered if it is there, else
        committed again, so that it is in the log once whatever became of the first try.
        False if the log is closed before the store is back."""
        delay, since = RECONNECT_SECONDS[0], time.monotonic()
        log.warning("audit store unavailable, reconnecting: %s", error)
        while True:
            with self._lock:
                self._unavailable = error  # readiness: 503, the balancer sends no more
                if time.monotonic() - since >= failover.WAIT_SECONDS:
                    self._failing_fast = error
                    for failed in (unknown, self._open):
                        if failed is not None:
                            failed.fail(error)
                    unknown, self._open = None, _Batch()
                deadline = time.monotonic() + delay
                while not self._closing and (remaining := deadline - time.monotonic()) > 0:
                    self._work.wait(remaining)
                if self._closing:
                    for failed in (unknown, self._open):
                        if failed is not None:
                            failed.fail(error)
                    return False
            try:
                self.store.reconnect()
                self._settle_unknown(unknown)
            except StoreUnavailableError as again:
                error, delay = again, min(delay * 2, RECONNECT_SECONDS[1])
                continue
            except BaseException as fatal:  # the writer stops: its waiters hear why
                if unknown is not None and not unknown.done.is_set():
                    unknown.fail(fatal)
                raise
            with self._lock:
                self._unavailable = self._failing_fast = None
            log.warning("audit store reachable again at %d records", self._tree.size)
            return True

    def _settle_unknown(self, unknown: _Batch | None) -> None:
        """Take what the store holds now into the tree; UNKNOWN (a batch whose commit's
        answer was lost) is answered with its records' numbers if that commit is there
        (the same rows at the same numbers), else committed again."""
        newer = self.store.newer(self._tree.size)
        committed = (
            unknown is not None
            and bool(unknown.rows)
            and dict(newer.rows).get(unknown.rows[0][0]) == unknown.rows[0][1]
        )
        self._follow(newer)
        if unknown is None:
            return
        if not unknown.records:  # the round was only following the others
            pass
        elif committed:
            unknown.first = unknown.rows[0][0]
        else:
            self._commit_sequenced(unknown)
        unknown.settle()

    # --- checkpoints --------------------------------------------------------------

    def _maybe_checkpoint(self, force: bool = False) -> None:
        size = self._tree.size
        if size == self._last_checkpoint_size:
            return
        due = size - self._last_checkpoint_size >= self.checkpoint_every or (
            time.monotonic() - self._last_checkpoint_time >= self.checkpoint_interval
        )
        if force or due:
            self._write_checkpoint()

    def _write_checkpoint(self) -> None:
        size = self._tree.size
        kid = self.checkpoint_key() if self.checkpoint_key is not None else None
        note = sign_checkpoint(self.ring, Checkpoint(self.origin, size, self._tree.root()), kid)
        atomic_write(self.witness / CHECKPOINT_DIR / f"{size:012d}", note)
        self.store.add_checkpoint(size, note)
        self._last_checkpoint_size, self._last_checkpoint_time = size, time.monotonic()
        if self.on_checkpoint is not None:
            self.on_checkpoint(size, note)  # only queues it: witnesses are slow or away

    def close(self) -> None:
        """Write what is queued, a final checkpoint, and stop."""
        with self._lock:
            self._closing = True
            self._work.notify()
        self._writer.join(timeout=60)
        if self.witness_pusher is not None:
            self.witness_pusher.close()  # bounded: the final checkpoint gets a few seconds
        if not self._writer.is_alive():  # the store is this thread's now
            try:
                self._write_cosigned()  # the final checkpoint's cosignatures, above all
            except Exception as error:  # best effort: the copies in witness_dir remain
                log.warning("cosigned checkpoints not stored at close: %s", error)
        self._leaves.close()
        self.store.close()


# --- verification -------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    ok: bool
    size: int
    checkpoints: int
    first_bad_seq: int | None = None
    problem: str = ""
    witnessed: int | None = None  # size of the newest witnessed checkpoint the log proves
    witnesses: tuple[str, ...] = ()
    # A restored log (RESTORED): the witnesses cosigned more records than the restore
    # brought back; (first missing seq, last cosigned size, the witnesses that cosigned it).
    gap: tuple[int, int, tuple[str, ...]] | None = None
    # A restored log: how many of its records come after the witnessed checkpoint it is
    # proved against (all of them without one), vouched for by the origin's signature only.
    unwitnessed_tail: int | None = None


def verify_log(
    store: AuditStore,
    witness_dir: str | Path,
    public_keys: dict[str, ec.EllipticCurvePublicKey],
    *,
    witnessed: Sequence[tuple[Checkpoint, Sequence[str]]] = (),
    require_witness: bool = False,
    checkpoint_interval: float | None = None,
    grace: float = 0.0,
    now: datetime.datetime | None = None,
    following: bool = False,
    restored: int | None = None,
) -> Verification:
    """Recompute every leaf and the tree; check them against the local leaf file, the
    signed checkpoints and WITNESSED (checkpoints a pinned witness cosigned).

    FOLLOWING (cluster mode): the leaf file follows a store other hosts append to,
    a second or so behind, so records past its end are not taken for insertions;
    they are checked against the checkpoints and witnesses like the others.

    RESTORED (a log brought back from a backup with that many records, on a site
    that has no leaf file of it): a witnessed checkpoint larger than that is the
    records written after the backup's newest state, not a removal, and the result
    names the gap; witnessed checkpoints within it must still be proved. Records
    after it are the new site's own, checked against its signed checkpoints (a
    drill submits none to the witnesses: they would see a fork). With
    REQUIRE_WITNESS, at least one witnessed checkpoint within the restored records
    must be proved - the cosigned notes the backup carried (AuditStore.cosigned):
    whoever could write the lost site's database and use its signing key could
    have rewritten the log and re-signed every checkpoint, and the witnesses'
    newest checkpoints, beyond the backup, cannot tell. The result counts the
    restored records after the one proved (UNWITNESSED_TAIL).

    Records after the newest anchor (the newest witnessed checkpoint with
    REQUIRE_WITNESS, else the newest signed one) fail once they are older than
    CHECKPOINT_INTERVAL + GRACE: by then a checkpoint covering them was due, so
    a log that has none was cut off from its witnesses or had records removed.
    """
    witness = Path(witness_dir)
    leaves_path = witness / LEAVES_FILE
    witnessed_leaves = leaves_path.read_bytes() if leaves_path.exists() else b""
    # The records there are now: a running service's later records (past the leaf
    # file just read) are the next verification's.
    stored = store.size()
    if len(witnessed_leaves) % 32:
        return Verification(False, 0, 0, None, f"{leaves_path}: not a whole number of hashes")
    count = len(witnessed_leaves) // 32

    notes = {size: note for size, note in store.checkpoints()}
    for path in sorted((witness / CHECKPOINT_DIR).glob("[0-9]*")):
        notes[int(path.name)] = path.read_text(encoding="utf-8")  # the witness copy wins
    checkpoints: dict[int, bytes] = {}
    for size, note in sorted(notes.items()):
        try:
            checkpoint = verify_checkpoint(note, public_keys)
        except CheckpointError as error:
            return Verification(False, 0, 0, None, f"checkpoint {size}: {error}")
        if checkpoint.size != size:
            return Verification(
                False, 0, 0, None, f"checkpoint file {size} holds size {checkpoint.size}"
            )
        checkpoints[size] = checkpoint.root
    anchors: dict[int, tuple[bytes, tuple[str, ...]]] = {}
    for checkpoint, names in witnessed:
        known = anchors.get(checkpoint.size)
        if known is not None and known[0] != checkpoint.root:
            return Verification(
                False,
                0,
                len(checkpoints),
                None,
                f"two witnessed checkpoints of size {checkpoint.size} differ "
                "(the origin signed a fork)",
            )
        previous = known[1] if known else ()
        anchors[checkpoint.size] = (checkpoint.root, tuple(sorted({*names, *previous})))
    newest_anchor = max(anchors, default=0)
    proved = 0  # the largest witnessed size whose tree this log matches

    def unprovable(problem: str, size: int) -> Verification:
        first = proved + 1
        return Verification(
            False,
            size,
            len(checkpoints),
            first,
            f"records from {first} on cannot be proved: {problem}",
            proved or None,
        )

    tree = merkle.CompactRange()
    expected = 0  # the records checked so far
    restored_end: datetime.datetime | None = None  # when the last restored record was written
    timestamps: dict[int, bytes] = {}
    due_from = set(checkpoints) | set(anchors) | {0}
    roots_at = sorted(set(checkpoints) | set(anchors))  # sizes whose tree is compared
    wanted = sorted({size + 1 for size in due_from} | ({restored} if restored else set()))
    # A chunk of records at a time (securecore.audit.chunks), in parallel processes
    # for a long log; the first record that fails a check is named as a
    # record-by-record pass would name it.
    requests = chunks.requests_for(witnessed_leaves, roots_at, wanted, stored)
    for chunk in chunks.check_chunks(store, requests, stored):
        base, n = chunk.base, chunk.count

        # (index in the chunk, precedence at one index, the problem): the first wins.
        failures: list[tuple[int, int, str]] = []
        if chunk.gap is not None:
            i, found = chunk.gap
            failures.append(
                (i, 0, f"record {base + i + 1} is missing (the next one stored is {found})")
            )
        if chunk.inner is not None:
            i = chunk.inner
            failures.append((i, 1, f"record {base + i + 1} carries another sequence number inside"))
        witnessed_here = min(n, max(0, count - base))
        if witnessed_here < n and not following and restored is None:
            i = witnessed_here
            problem = f"record {base + i + 1} is not in the witness (inserted or never witnessed)"
            failures.append((i, 2, problem))
        if chunk.differs is not None:
            i = chunk.differs
            problem = (
                f"record {base + i + 1} differs from what was witnessed (modified or reordered)"
            )
            failures.append((i, 3, problem))
        failed = min(failures) if failures else None
        checked = failed[0] if failed else n  # the records of the chunk that pass their own checks
        for index, entry in chunk.entries.items():
            if index < checked:
                timestamps[base + index + 1] = entry
        if restored is not None and base < restored <= base + checked:
            record = Record.from_entry(chunk.entries[restored - base - 1])
            restored_end = datetime.datetime.fromisoformat(record.timestamp)
        for size in roots_at[
            bisect.bisect_right(roots_at, base) : bisect.bisect_right(roots_at, base + checked)
        ]:
            prefix = tree.copy()
            for value, height in chunk.subtrees[size - base]:
                prefix.push_subtree(value, height)
            root = prefix.root()
            anchor = anchors.get(size)
            if anchor is not None and (restored is None or size <= restored):
                if anchor[0] != root:
                    return unprovable(
                        f"the tree of its first {size} records is not the one witness "
                        f"{', '.join(anchor[1])} cosigned (rewritten)",
                        size,
                    )
                proved = size
            signed = checkpoints.get(size)
            if signed is not None and signed != root:
                problem = f"the tree of size {size} does not match its signed checkpoint"
                return Verification(False, size, len(checkpoints), None, problem)
        if failed is not None:
            i, _, problem = failed
            return Verification(False, base + i, len(checkpoints), base + i + 1, problem)
        for value, height in chunk.subtrees[n]:
            tree.push_subtree(value, height)
        expected = base + n
    if restored is not None and not 0 <= restored <= expected:
        problem = f"the log holds {expected} records, not the {restored} the restore brought back"
        return Verification(False, expected, len(checkpoints), None, problem)
    gap = None
    if restored is not None and newest_anchor > restored:
        gap = (restored + 1, newest_anchor, anchors[newest_anchor][1])
    elif newest_anchor > expected:
        return unprovable(
            f"witness {', '.join(anchors[newest_anchor][1])} cosigned a checkpoint of "
            f"{newest_anchor} records, the log holds {expected} (records were removed)",
            expected,
        )
    if expected < count or (checkpoints and max(checkpoints) > expected):
        problem = f"the log ends at {expected}; the witness or a checkpoint knows more (truncated)"
        return Verification(False, expected, len(checkpoints), expected + 1, problem)
    tail = None if restored is None else restored - proved
    if restored and require_witness and not proved:
        problem = (
            f"the restored log is NOT anchored: no checkpoint within its {restored} records "
            "was cosigned by a pinned witness (cosigned notes missing from the backup?)"
        )
        return Verification(
            False, expected, len(checkpoints), None, problem, gap=gap, unwitnessed_tail=tail
        )
    covered = proved if require_witness else max(checkpoints, default=0)
    # A restored log is judged at its own end, not now: the lost site had until then to
    # get its records witnessed. A record the backup holds that was due under a
    # witnessed checkpoint before the backup's last record, with none in the backup,
    # means the checkpoints after it were removed (or the witnesses were not answering).
    # Records after the restored ones are the new site's own (a drill's), not judged.
    end: datetime.datetime | None
    if restored is None:
        end, judged = now or datetime.datetime.now(datetime.UTC), expected
    else:
        end, judged = restored_end, min(expected, restored)
    if checkpoint_interval is not None and judged > covered and end is not None:
        first = Record.from_entry(timestamps[covered + 1])
        written = datetime.datetime.fromisoformat(first.timestamp)
        due = written + datetime.timedelta(seconds=checkpoint_interval + grace)
        if end > due:
            kind = "witnessed" if require_witness else "signed"
            problem = (
                f"record {covered + 1} was written at {first.timestamp} and no {kind} "
                f"checkpoint covers it, although one was due by {due.isoformat()} "
                "(records removed, or no checkpoint reached a witness)"
            )
            if restored is not None:
                problem += f", before the restored log's last record ({end.isoformat()})"
            return Verification(
                False, expected, len(checkpoints), covered + 1, problem, proved or None
            )
    return Verification(
        True,
        expected,
        len(checkpoints),
        None,
        "",
        proved or None,
        tuple(anchors[proved][1]) if proved else (),
        gap,
        tail,
    )
