"""Benchmark: durable audit appends (throughput, p50/p99 latency) and verification speed.

Targets (REQ-PERF-3): append p99 under 50 ms while sustaining at
least 20,000 durable appends/s; verification of 1,000,000 records under 10 s.
Every append is acknowledged only after its group's fsync (SQLite WAL,
synchronous=FULL, plus the witness file), exactly as in the service.

    .venv/bin/python bench/audit_log.py [--sizes 100000 1000000] [--threads 64]

Writes bench/results/audit_log.json (and prints it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from securecore.audit.log import AuditLog, verify_log  # noqa: E402
from securecore.audit.store import SQLiteAuditStore  # noqa: E402
from securecore.keys.base import KeyRing  # noqa: E402
from securecore.keys.software import SoftwareKeys  # noqa: E402


def run(size: int, threads: int, directory: Path) -> dict:
    keys = directory / "keys"
    keys.mkdir(mode=0o700)
    backend = SoftwareKeys(keys)
    backend.create_version("securecore-signing", "ec_p256")
    backend.create_version("securecore-kek", "aes256")
    ring = KeyRing(backend, "securecore-signing", "securecore-kek")
    log = AuditLog(
        SQLiteAuditStore(directory / "audit.db"),
        ring,
        directory / "witness",
        origin="bench/audit",
        hmac_key=b"b" * 32,
        checkpoint_every=10_000,
    )
    per_thread = size // threads
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def worker(index: int) -> None:
        own = latencies[index]
        for i in range(per_thread):
            started = time.perf_counter()
            log.append("bench", "request", "core", "success", {"i": i, "worker": index})
            own.append(time.perf_counter() - started)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - started
    log.close()
    every = sorted(latency for own in latencies for latency in own)
    appended = len(every)

    store = SQLiteAuditStore(directory / "audit.db")
    public = {"securecore-signing-v1": backend.public_key("securecore-signing-v1")}
    verify_started = time.perf_counter()
    result = verify_log(store, directory / "witness", public)
    verify_elapsed = time.perf_counter() - verify_started
    store.close()
    if not result.ok:
        raise SystemExit(f"verification failed: {result.problem}")
    return {
        "records": appended,
        "threads": threads,
        "appends_per_second": round(appended / elapsed),
        "append_latency_ms": {
            "p50": round(statistics.median(every) * 1000, 2),
            "p99": round(every[int(len(every) * 0.99) - 1] * 1000, 2),
            "max": round(every[-1] * 1000, 2),
        },
        "verify_seconds": round(verify_elapsed, 2),
        "verify_records_per_second": round(appended / verify_elapsed),
        "checkpoints": result.checkpoints,
        "targets_met": {
            "append_p99_under_50ms": every[int(len(every) * 0.99) - 1] < 0.050,
            "appends_at_least_20000_per_s": appended / elapsed >= 20_000,
            "verify_1m_under_10s": verify_elapsed * (1_000_000 / appended) < 10,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--threads", type=int, default=128)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "audit_log.json"))
    args = parser.parse_args()
    results = {
        "benchmark": "audit_log",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "runs": [],
    }
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-audit-", dir=ROOT / "output") as scratch:
            results["runs"].append(run(size, args.threads, Path(scratch)))
        print(json.dumps(results["runs"][-1]), flush=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
