"""Audit logs for tests: one on a file key ring, its verification, concurrent appenders."""

from __future__ import annotations

import threading
from pathlib import Path

from securecore.audit.log import AuditError, AuditLog, verify_log
from securecore.audit.store import AuditStore, SQLiteAuditStore
from securecore.keys.base import KeyRing
from securecore.keys.software import SoftwareKeys


def append_from_threads(
    log: AuditLog, threads: int = 8, each: int = 25, failures: list | None = None
) -> list[int]:
    """Append threads x each records concurrently; the sequence numbers acknowledged
    (with FAILURES, the AuditErrors go there instead of ending the thread)."""
    acknowledged: list[int] = []

    def worker(n: int) -> None:
        for i in range(each):
            try:
                acknowledged.append(log.append(f"user-{n}", "login", "core", "success", {"i": i}))
            except AuditError as error:
                if failures is None:
                    raise
                failures.append(error)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return acknowledged


HMAC_KEY = b"k" * 32


def open_log(
    tmp_path: Path, keys: SoftwareKeys, store: AuditStore | None = None, **options
) -> AuditLog:
    ring = KeyRing(keys, "securecore-signing", "securecore-kek")
    return AuditLog(
        store or SQLiteAuditStore(tmp_path / "audit.db"),
        ring,
        tmp_path / "witness",
        origin="securecore.test/audit",
        hmac_key=HMAC_KEY,
        **options,
    )


def public_keys(keys: SoftwareKeys) -> dict:
    return {
        f"securecore-signing-v{v}": keys.public_key(f"securecore-signing-v{v}")
        for v in keys.versions("securecore-signing")
    }


def verify(tmp_path: Path, keys: SoftwareKeys):
    store = SQLiteAuditStore(tmp_path / "audit.db")
    try:
        return verify_log(store, tmp_path / "witness", public_keys(keys))
    finally:
        store.close()
