"""The audit log checked a chunk of records at a time, chunks in parallel processes.

verify_log (securecore.audit.log) checks every record of a log: its sequence
number, its leaf hash against the local leaf file, and the tree's root at every
signed or witnessed checkpoint. The work on one chunk of VERIFY_CHUNK records
(reading them, hashing their leaves and the chunk's complete subtrees,
comparing the leaves with the leaf file's) needs nothing from the other
chunks, so a log of several chunks is checked by a pool of processes, one per
CPU, each opening the store again and reading its own records
(AuditStore.reader); verify_log takes the results in order, joins the chunks'
subtrees into the tree and judges them exactly as a record-by-record pass
would. A chunk is a power of two long, so that each is one complete subtree of
the log's Merkle tree.

Hashing a million records takes about 0.9 s of one CPU and reading them
about 0.3 s: the pool is what brings a million records under a second on two
CPUs (bench/audit_log.py).
"""

from __future__ import annotations

import bisect
import concurrent.futures
import multiprocessing
import multiprocessing.util
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from securecore.audit import merkle
from securecore.audit.store import AuditStore

VERIFY_CHUNK = 1 << 16  # records: a few tens of MB of entries, leaves and subtrees
# Starting a pool of spawned processes costs about 0.2 s: a log of fewer chunks
# is checked sooner in this process.
POOL_FROM_CHUNKS = 4
# Processes at most, whatever the CPUs: each holds a connection to the store (on
# PostgreSQL, one the service's own may need) and a copy of the interpreter.
MAX_PROCESSES = 8


@dataclass(frozen=True)
class ChunkRequest:
    """What verify_log needs of the chunk of the records after BASE."""

    base: int  # the records before the chunk: a multiple of its length
    length: int
    witnessed: bytes  # the leaf file's hashes of the chunk's records, as far as it goes
    roots_at: tuple[int, ...]  # record counts in the chunk whose subtrees are wanted
    entries_at: tuple[int, ...]  # indexes in the chunk of the entries wanted


@dataclass(frozen=True)
class ChunkResult:
    base: int
    count: int  # records read (fewer than asked: the log's end)
    gap: tuple[int, int] | None  # (index, the sequence number found there instead)
    inner: int | None  # the first index whose entry names another sequence number
    differs: int | None  # the first index whose leaf is not the witnessed one
    subtrees: dict[int, list[tuple[bytes, int]]]  # per record count asked, and `count`
    entries: dict[int, bytes]  # per index asked


def check_chunk(store: AuditStore, request: ChunkRequest) -> ChunkResult:
    rows = store.entries_between(request.base, request.length)
    base, count = request.base, len(rows)
    seqs = [seq for seq, _ in rows]
    entries = [entry for _, entry in rows]
    gap = None
    if seqs != list(range(base + 1, base + count + 1)):
        index = next(i for i, seq in enumerate(seqs) if seq != base + 1 + i)
        gap = (index, seqs[index])
    leaves = merkle.leaf_hashes(entries)
    witnessed = min(count, len(request.witnessed) // merkle.HASH_SIZE)
    differs = None
    if b"".join(leaves[:witnessed]) != request.witnessed[: witnessed * merkle.HASH_SIZE]:
        differs = next(
            i
            for i in range(witnessed)
            if leaves[i] != request.witnessed[i * merkle.HASH_SIZE : (i + 1) * merkle.HASH_SIZE]
        )
    # The number inside an entry is looked at where the leaf file does not vouch for
    # the entry (records past its end), and where a leaf differs, to say why.
    looked_at = range(min(witnessed, differs if differs is not None else count), count)
    inner = next((i for i in looked_at if b'"seq":%d,' % seqs[i] not in entries[i]), None)
    levels = merkle.levels(leaves)
    wanted = [size for size in request.roots_at if size <= count]
    return ChunkResult(
        base,
        count,
        gap,
        inner,
        differs,
        {size: merkle.prefix_subtrees(levels, size) for size in [*wanted, count]},
        {i: entries[i] for i in request.entries_at if i < count},
    )


# A pool process's own connection to the store (_open_in_a_process), for its chunks.
_process_store: AuditStore | None = None


def _open_in_a_process(opener: Callable[[], AuditStore]) -> None:
    global _process_store
    _process_store = opener()
    multiprocessing.util.Finalize(None, _process_store.close, exitpriority=10)


def _check_in_a_process(request: ChunkRequest) -> ChunkResult:
    assert _process_store is not None  # noqa: S101 - the pool's initializer opened it
    return check_chunk(_process_store, request)


def _one_by_one(store: AuditStore, requests: Iterator[ChunkRequest]) -> Iterator[ChunkResult]:
    for request in requests:
        result = check_chunk(store, request)
        yield result
        if result.count < request.length:
            return


def check_chunks(
    store: AuditStore, requests: Iterator[ChunkRequest], end: int, processes: int | None = None
) -> Iterator[ChunkResult]:
    """The result of each request, in order, until a chunk ends short of its length
    (the log's end). A log of more than POOL_FROM_CHUNKS chunks (END records) in a
    store that can be opened again is checked by PROCESSES processes (default: the
    CPUs this one may use, at most MAX_PROCESSES, at most one per chunk), each with
    its own connection, a few chunks ahead of the caller; the caller may stop at
    any time."""
    opener = store.reader()
    chunks = -(-end // VERIFY_CHUNK)
    workers = min(processes or len(os.sched_getaffinity(0)), MAX_PROCESSES, chunks)
    if opener is None or workers < 2 or chunks <= POOL_FROM_CHUNKS:
        yield from _one_by_one(store, requests)
        return
    try:
        # Spawned, not forked: the caller may be a process with threads of its own.
        pool = concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_open_in_a_process,
            initargs=(opener,),
        )
    except OSError:  # no shared memory for the pool's locks (a system without /dev/shm)
        yield from _one_by_one(store, requests)
        return
    with pool:
        # Stopped early (the caller found a failure, or the log's end), the chunks
        # still pending are let finish: a few, and cancelling them can leave
        # Python 3.11's pool waiting at shutdown for work that never comes.
        pending: deque[tuple[ChunkRequest, concurrent.futures.Future[ChunkResult]]] = deque()
        while True:
            while len(pending) < 2 * workers:
                ahead = next(requests, None)
                if ahead is None:
                    break
                pending.append((ahead, pool.submit(_check_in_a_process, ahead)))
            if not pending:
                return
            request, future = pending.popleft()
            result = future.result()
            yield result
            if result.count < request.length:
                return


def requests_for(
    witnessed_leaves: bytes, roots_at: Sequence[int], entries_at: Sequence[int], end: int
) -> Iterator[ChunkRequest]:
    """The chunks of a log's first END records, in order: for each, the leaf file's
    part, the sizes within it whose roots are wanted (ROOTS_AT, sorted) and the
    record numbers whose entries are (ENTRIES_AT, sorted). Records past END came
    after the verification began, and are left to the next one."""
    base, chunk = 0, VERIFY_CHUNK
    while base < end:
        last = min(base + chunk, end)
        roots = roots_at[bisect.bisect_right(roots_at, base) : bisect.bisect_right(roots_at, last)]
        numbers = entries_at[
            bisect.bisect_right(entries_at, base) : bisect.bisect_right(entries_at, last)
        ]
        yield ChunkRequest(
            base,
            last - base,
            witnessed_leaves[base * merkle.HASH_SIZE : last * merkle.HASH_SIZE],
            tuple(size - base for size in roots),
            tuple(number - base - 1 for number in numbers),
        )
        base = last
