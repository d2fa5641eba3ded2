"""Benchmark: the full check set, seconds per host and for every lab host in parallel.

Target (REQ-PERF-7): under 5 s per host; all four lab hosts in under 1.5 times
the time of one. Each run is a real gathering pass over SSH (ansible-runner,
the lab inventory) followed by the evaluation of every check; the host's own
gathering time is what ansible-runner reports for it.

    .venv/bin/python bench/compliance.py [--inventory inventories/lab] [--rounds 3]

Needs the lab up and converged (`scripts/run lab`). Writes
bench/results/compliance.json (and prints it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compliance.catalog import load_catalogs  # noqa: E402
from compliance.checks import load_checks  # noqa: E402
from compliance.engine import run_checks  # noqa: E402
from compliance.gather.runner import gather, read_inventory  # noqa: E402


def timed(inventory: Path, limit: str | None, checks) -> tuple[float, list]:
    started = time.perf_counter()
    hosts = gather(inventory, limit)
    results = run_checks(checks, hosts, [])
    elapsed = time.perf_counter() - started
    errors = [f"{h.host}: {h.error}" for h in hosts if h.error]
    if errors:
        raise SystemExit(f"gathering failed: {errors}")
    return elapsed, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", type=Path, default=ROOT / "inventories" / "lab")
    parser.add_argument("--rounds", type=int, default=3)
    # The target is about the four service hosts; the management host
    # (which runs the scheduled checks) can be added with --limit all.
    parser.add_argument("--limit", default="dmz,core,plugin")
    args = parser.parse_args()
    checks = load_checks(load_catalogs())
    names = sorted(read_inventory(args.inventory, args.limit))
    single: dict[str, list[float]] = {name: [] for name in names}
    together: list[float] = []
    for _ in range(args.rounds):
        for name in names:
            single[name].append(timed(args.inventory, name, checks)[0])
        elapsed, results = timed(args.inventory, ",".join(names), checks)
        together.append(elapsed)
    one = {name: round(statistics.median(times), 2) for name, times in single.items()}
    slowest_one = max(one.values())
    all_hosts = round(statistics.median(together), 2)
    report = {
        "benchmark": "compliance check (gather + evaluate), lab hosts",
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "rounds": args.rounds,
        "hosts": names,
        "checks": len(checks),
        "results_per_full_run": len(results),
        "seconds_one_host": one,
        "seconds_all_hosts_parallel": all_hosts,
        "ratio_all_to_slowest_one": round(all_hosts / slowest_one, 2),
        "targets": {"per_host_seconds": 5, "ratio": 1.5},
        "met": {
            "per_host_under_5s": slowest_one < 5,
            "four_hosts_under_1_5x_one": all_hosts < 1.5 * slowest_one,
        },
    }
    out = ROOT / "bench" / "results" / "compliance.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
