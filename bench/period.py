"""Benchmark: `compliance period` over a year of evidence from five hosts.

Target (REQ-PERF-9): an auditor's whole year (2025's daily, weekly and monthly
checklist runs over five hosts shaped like the lab's) is verified, read and
reported (period.json, report.md, report.html, OSCAL, the samples, signed) in
under 30 s. The year is made first, not timed, by the writer the commands use on
a clock of its own (tests.support.period, the scenario the period tests read:
a missing day, late runs, failures fixed within and after their deadlines, a
waiver, a key rotation on 1 July, retention). Each round then runs the command
as an auditor would, in a process of its own; its wall-clock time, CPU time and
peak memory are what is reported.

    .venv/bin/python bench/period.py [--rounds 3] [--keep DIR]

Needs no lab. Writes bench/results/period.json (and prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.period import make_year, period_arguments  # noqa: E402

TARGET_SECONDS = 30
# The lab's five service and management hosts, with the groups that decide which
# checks apply to each (inventories/lab/hosts.yml).
FIVE_HOSTS = {
    "mgmt-01": ["management", "monitoring", "database_backup"],
    "core-01": ["core", "database"],
    "core-02": ["core", "database"],
    "dmz-01": ["dmz", "edge"],
    "plugin-01": ["plugin"],
}


def run_period(year, out: Path) -> dict[str, float]:
    """One `compliance period` over the year, in a process of its own."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    arguments = period_arguments(year, year.root, out, year.heads)
    proc = subprocess.run(
        [sys.executable, "-m", "compliance.cli", *arguments, "--seed", "7"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"compliance period exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return {
        "seconds": round(elapsed, 2),
        "cpu_seconds": round(
            (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2
        ),
        # ru_maxrss of the children is the largest any child reached, in KiB on Linux.
        "peak_rss_mib": round(after.ru_maxrss / 1024, 1),
    }


def size_of(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="make the year here and keep it")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench-period-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        year = make_year(workdir, FIVE_HOSTS)
        rounds = []
        for number in range(args.rounds):
            out = workdir / f"period-{number}"
            rounds.append(run_period(year, out))
            produced = out
        document = json.loads((produced / "period.json").read_text())
        sizes = {"evidence": size_of(year.root), "period_bundle": size_of(produced)}
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    median = statistics.median(r["seconds"] for r in rounds)
    report = {
        "benchmark": "compliance period: a year of evidence over five hosts",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "hosts": sorted(FIVE_HOSTS),
        "runs_in_period": sum(len(b) for b in year.bundles.values()),
        "evidence_bytes": sizes["evidence"],
        "year_made_in_seconds": year.seconds,
        "verified": document.get("verified"),
        "rounds": rounds,
        "seconds_median": median,
        "period_bundle_bytes": sizes["period_bundle"],
        "target_seconds": TARGET_SECONDS,
        "met": median < TARGET_SECONDS,
    }
    result = ROOT / "bench" / "results" / "period.json"
    result.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
