"""Counters shared by every worker process: token buckets and sliding windows in one mmap.

Rate limits and transfer limits are consulted on every request, so they must
hold across all workers and cost microseconds. A write transaction in SQLite
per request cost more than the rest of the policy engine together (bench/
service.py), so the counters live in a memory-mapped file of fixed size
instead: an open-addressing hash table whose slots are

    key digest (16 bytes, BLAKE2b; all zeros = empty) | touched | 14 values (float64 each)

- token bucket: values = tokens left, time of the last update;
- sliding window: values = start of the newest sub-window, then the amounts
  of GRANULES + 1 sub-windows of WINDOW / GRANULES seconds each, oldest
  first. The sum covers at least the last WINDOW seconds and at most one
  sub-window more, so an amount is never forgotten early (it counts for
  60 to 65 seconds in a one-minute window): limits err on the safe side.

Processes exclude each other with an fcntl lock on the file, threads of one
process with a lock of their own (fcntl locks belong to processes). The
counters are deliberately not durable: after a restart every bucket starts
full and every window empty, as they would after a pause.

A key is looked for in at most PROBES consecutive slots; when all are taken,
the slot touched longest ago is reused. With the default 65,536 slots that
only happens when tens of thousands of clients are active at once, and the
evicted counter is the one idle longest (a bucket idle that long is full).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from securecore.errors import SecureCoreError

MAGIC = b"SCCNTR01"
HEADER = struct.Struct("<8sI4x")
GRANULES = 12
SLOT = struct.Struct(f"<16sd{GRANULES + 2}d")
EMPTY = bytes(16)
PROBES = 32
DEFAULT_SLOTS = 1 << 16


_UNUSED_BY_BUCKETS = (0.0,) * GRANULES


class CounterFileError(SecureCoreError):
    """The counter file cannot be used (named in the message)."""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: float = 0.0


class SharedCounters:
    def __init__(self, path: str | Path, slots: int = DEFAULT_SLOTS) -> None:
        if slots <= 0 or slots & (slots - 1):
            raise ValueError(f"slots must be a power of two, not {slots}")
        self.path = Path(path)
        self._size = HEADER.size + slots * SLOT.size
        self._thread_lock = threading.Lock()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            try:
                self.slots = self._prepare(fd, slots)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, HEADER.size + self.slots * SLOT.size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._mask = self.slots - 1

    def _prepare(self, fd: int, slots: int) -> int:
        """The table's size: the existing file's if it is ours, else a new empty table."""
        existing = os.fstat(fd).st_size
        if existing >= HEADER.size:
            magic, found = HEADER.unpack(os.pread(fd, HEADER.size, 0))
            if magic == MAGIC and existing == HEADER.size + found * SLOT.size:
                return found
            if magic != MAGIC and existing:
                raise CounterFileError(f"{self.path}: not a securecore counter file")
        os.ftruncate(fd, 0)  # a torn file from a crash during creation: start again
        os.ftruncate(fd, self._size)
        os.pwrite(fd, HEADER.pack(MAGIC, slots), 0)
        return slots

    # --- the two kinds of counter ---------------------------------------------------

    def take(self, key: str, rate: float, burst: float, now: float, cost: float = 1.0) -> Verdict:
        """Take COST tokens from the bucket KEY (RATE per second, at most BURST)."""
        with self._locked():
            offset, digest, found = self._slot(key)
            if found:
                _, _, tokens, updated, *_ = SLOT.unpack_from(self._map, offset)
                tokens = min(burst, tokens + max(0.0, now - updated) * rate)
            else:
                tokens = burst
            allowed = tokens >= cost
            if allowed:
                tokens -= cost
            SLOT.pack_into(self._map, offset, digest, now, tokens, now, *_UNUSED_BY_BUCKETS)
        return Verdict(True) if allowed else Verdict(False, (cost - tokens) / rate)

    def add(self, key: str, amount: float, now: float, window: float) -> float:
        """Add AMOUNT to the window KEY; returns the amount within the last WINDOW seconds."""
        granule = window / GRANULES
        newest = now - (now % granule)
        amounts = [0.0] * (GRANULES + 1)
        with self._locked():
            offset, digest, found = self._slot(key)
            if found:
                _, _, start, *stored = SLOT.unpack_from(self._map, offset)
                # A clock stepping back (moved < 0) must not forget amounts either.
                moved = max(0, round((newest - start) / granule))
                if moved <= GRANULES:
                    amounts = stored[moved:] + [0.0] * moved
            amounts[-1] += amount
            SLOT.pack_into(self._map, offset, digest, now, newest, *amounts)
        return sum(amounts)

    # --- the table ------------------------------------------------------------------

    def _locked(self) -> _Exclusive:
        return _Exclusive(self._thread_lock, self._fd)

    def _slot(self, key: str) -> tuple[int, bytes, bool]:
        """(offset, digest, whether KEY is there) of KEY's slot, claiming one if needed."""
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        home = int.from_bytes(digest[:8], "little")
        oldest, oldest_touched = 0, float("inf")
        for probe in range(PROBES):
            offset = HEADER.size + ((home + probe) & self._mask) * SLOT.size
            stored = self._map[offset : offset + 16]
            if stored == digest:
                return offset, digest, True
            if stored == EMPTY:
                return offset, digest, False
            touched = SLOT.unpack_from(self._map, offset)[1]
            if touched < oldest_touched:
                oldest, oldest_touched = offset, touched
        return oldest, digest, False

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


class _Exclusive:
    """Holds the thread lock, then the file lock: one holder across threads and processes."""

    __slots__ = ("fd", "lock")

    def __init__(self, lock: threading.Lock, fd: int) -> None:
        self.lock, self.fd = lock, fd

    def __enter__(self) -> None:
        self.lock.acquire()
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
        except BaseException:
            self.lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
        finally:
            self.lock.release()
