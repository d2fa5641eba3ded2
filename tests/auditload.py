"""Concurrent appenders for audit log tests."""

from __future__ import annotations

import threading

from securecore.audit.log import AuditLog


def append_from_threads(log: AuditLog, threads: int = 8, each: int = 25) -> list[int]:
    """Append threads x each records concurrently; the sequence numbers acknowledged."""
    acknowledged: list[int] = []

    def worker(n: int) -> None:
        for i in range(each):
            acknowledged.append(log.append(f"user-{n}", "login", "core", "success", {"i": i}))

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return acknowledged
