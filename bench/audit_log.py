"""Benchmark: durable audit appends (throughput, p50/p99 latency) and verification speed.

Targets (REQ-PERF-3): append p99 under 50 ms while sustaining at least 20,000
durable appends/s; verification of 1,000,000 records under 10 s. The goals of
REQ-PERF-11 are tighter: 50,000 appends/s with p99 under 5 ms, and 1,000,000
records verified in under 1 s; the results say whether each is met.

Every append is acknowledged only after its group's commit is durable (SQLite
WAL with synchronous=FULL, or PostgreSQL with synchronous_commit on and fsync)
and the witness leaf file is fsynced, exactly as in the service. Appenders
come two ways:
  * `loop`: concurrent tasks on one event loop awaiting `append_async`, as the
    service's request path does (one worker process);
  * `threads`: threads blocking in `append`, as the CLI and the admin actions do.

    .venv/bin/python bench/audit_log.py [--sizes 100000 1000000] [--stores sqlite postgresql]

The PostgreSQL runs use a private server on a Unix socket (Debian's
postgresql package, as the integration tests do). Writes
bench/results/audit_log.json (and prints each run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from securecore.audit.log import AuditLog, verify_log  # noqa: E402
from securecore.audit.postgres import PostgresAuditStore  # noqa: E402
from securecore.audit.store import AuditStore, SQLiteAuditStore  # noqa: E402
from securecore.keys.base import KeyRing  # noqa: E402
from securecore.keys.software import SoftwareKeys  # noqa: E402
from tests.support.postgres import fresh_database, postgres_server  # noqa: E402

GOAL_APPENDS_PER_SECOND = 50_000
GOAL_P99_MS = 5.0
GOAL_VERIFY_1M_SECONDS = 1.0


def append_from_threads(log: AuditLog, size: int, concurrency: int) -> list[float]:
    per_thread = size // concurrency
    latencies: list[list[float]] = [[] for _ in range(concurrency)]

    def worker(index: int) -> None:
        own = latencies[index]
        for i in range(per_thread):
            started = time.perf_counter()
            log.append("bench", "request", "core", "success", {"i": i, "worker": index})
            own.append(time.perf_counter() - started)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return [latency for own in latencies for latency in own]


def append_from_a_loop(log: AuditLog, size: int, concurrency: int) -> list[float]:
    per_task = size // concurrency

    async def task(index: int) -> list[float]:
        own = []
        for i in range(per_task):
            started = time.perf_counter()
            await log.append_async("bench", "request", "core", "success", {"i": i, "task": index})
            own.append(time.perf_counter() - started)
        return own

    async def everyone() -> list[list[float]]:
        return await asyncio.gather(*(task(n) for n in range(concurrency)))

    return [latency for own in asyncio.run(everyone()) for latency in own]


APPENDERS: dict[str, Callable[[AuditLog, int, int], list[float]]] = {
    "loop": append_from_a_loop,
    "threads": append_from_threads,
}


def run(
    store: Callable[[], AuditStore], mode: str, size: int, concurrency: int, directory: Path
) -> dict:
    keys = directory / "keys"
    keys.mkdir(mode=0o700)
    backend = SoftwareKeys(keys)
    backend.create_version("securecore-signing", "ec_p256")
    backend.create_version("securecore-kek", "aes256")
    ring = KeyRing(backend, "securecore-signing", "securecore-kek")
    log = AuditLog(
        store(),
        ring,
        directory / "witness",
        origin="bench/audit",
        hmac_key=b"b" * 32,
        checkpoint_every=1000,  # the service's default
    )
    started = time.perf_counter()
    every = sorted(APPENDERS[mode](log, size, concurrency))
    elapsed = time.perf_counter() - started
    log.close()
    appended = len(every)
    p99 = every[int(len(every) * 0.99) - 1]

    reader = store()
    public = {"securecore-signing-v1": backend.public_key("securecore-signing-v1")}
    verify_started = time.perf_counter()
    result = verify_log(reader, directory / "witness", public)
    verify_elapsed = time.perf_counter() - verify_started
    reader.close()
    if not result.ok:
        raise SystemExit(f"verification failed: {result.problem}")
    return {
        "records": appended,
        "appenders": f"{concurrency} {'tasks on one event loop' if mode == 'loop' else mode}",
        "appends_per_second": round(appended / elapsed),
        "append_latency_ms": {
            "p50": round(statistics.median(every) * 1000, 2),
            "p99": round(p99 * 1000, 2),
            "max": round(every[-1] * 1000, 2),
        },
        "verify_seconds": round(verify_elapsed, 3),
        "verify_records_per_second": round(appended / verify_elapsed),
        "checkpoints": result.checkpoints,
        "targets_met": {
            "append_p99_under_50ms": p99 < 0.050,
            "appends_at_least_20000_per_s": appended / elapsed >= 20_000,
            "verify_1m_under_10s": verify_elapsed * (1_000_000 / appended) < 10,
        },
        "goals_met": {
            "append_p99_under_5ms": p99 * 1000 < GOAL_P99_MS,
            "appends_at_least_50000_per_s": appended / elapsed >= GOAL_APPENDS_PER_SECOND,
            "verify_1m_under_1s": verify_elapsed * (1_000_000 / appended) < GOAL_VERIFY_1M_SECONDS,
        },
    }


@contextmanager
def stores(kind: str, directory: Path) -> Iterator[Callable[[], AuditStore]]:
    """Opens a fresh store of KIND (the log's, then the verifier's on the same data)."""
    if kind == "sqlite":
        yield lambda: SQLiteAuditStore(directory / "audit.db")
        return
    with postgres_server() as dsn:
        database = fresh_database(dsn, "bench_audit")
        yield lambda: PostgresAuditStore(database)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--modes", nargs="+", default=["loop", "threads"], choices=APPENDERS)
    parser.add_argument("--concurrency", type=int, default=128, help="tasks or threads")
    parser.add_argument(
        "--postgresql-size", type=int, default=100_000, help="records per PostgreSQL run"
    )
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "audit_log.json"))
    args = parser.parse_args()
    runs: list[dict] = []
    results = {
        "benchmark": "audit_log",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "runs": runs,
    }
    for kind in args.stores:
        sizes = args.sizes if kind == "sqlite" else [args.postgresql_size]
        for mode in args.modes:
            for size in sizes:
                prefix = f"bench-audit-{kind}-"
                scratch = ROOT / "output"
                scratch.mkdir(exist_ok=True)
                with (
                    tempfile.TemporaryDirectory(prefix=prefix, dir=scratch) as work,
                    stores(kind, Path(work)) as store,
                ):
                    run_result = run(store, mode, size, args.concurrency, Path(work))
                runs.append({"store": kind, **run_result})
                print(json.dumps(runs[-1]), flush=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
