"""Benchmark: a second `site.yml` run on the converged lab (nothing left to change).

What an operator waits for when they re-run the site to confirm it: wall-clock
seconds, how many tasks ran (each `TASK [...]` header of the run, whatever the
number of hosts it ran on), and the recap's ok/changed/failed per host. The run
must change nothing (`changed=0` on every host); the benchmark fails otherwise,
since a figure for a run that did work is not the figure asked for.

    .venv/bin/python bench/site_rerun.py [--inventory inventories/lab] [--rounds 1]
        [--converge-first]

Needs the lab up and converged (`scripts/run lab`); --converge-first runs
site.yml once before measuring (not timed). The Ansible settings that decide the
time (forks, gathering, pipelining, SSH ControlPersist) come from ansible.cfg and
are written with the result. Writes bench/results/site_rerun.json (and prints it).
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.commands import ansible_env, play_recap  # noqa: E402


def site_run(inventory: Path) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(ROOT / "playbooks" / "site.yml")],
        cwd=ROOT,
        env=ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"site.yml failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return elapsed, proc.stdout


def settings() -> dict[str, str]:
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "ansible.cfg")
    return {
        "forks": config.get("defaults", "forks", fallback="5"),
        "gathering": config.get("defaults", "gathering", fallback="implicit"),
        "pipelining": config.get("ssh_connection", "pipelining", fallback="False"),
        "ssh_args": config.get("ssh_connection", "ssh_args", fallback=""),
        "strategy": config.get("defaults", "strategy", fallback="linear"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", type=Path, default=ROOT / "inventories" / "lab")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--converge-first", action="store_true")
    args = parser.parse_args()
    if args.converge_first:
        site_run(args.inventory)
    seconds: list[float] = []
    tasks: list[int] = []
    hosts: dict[str, dict[str, int]] = {}
    for _ in range(args.rounds):
        elapsed, output = site_run(args.inventory)
        hosts = play_recap(output)
        changed = {h: r["changed"] for h, r in hosts.items() if r["changed"]}
        if changed or not hosts:
            raise SystemExit(f"the second run changed something: {changed or output[-2000:]}")
        seconds.append(round(elapsed, 1))
        tasks.append(output.count("\nTASK ["))
    result = {
        "benchmark": "second site.yml run on the converged lab (changed=0)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "ansible": settings(),
        "rounds": args.rounds,
        "seconds": seconds,
        "seconds_median": statistics.median(seconds),
        "tasks": tasks[-1],
        "hosts": hosts,
    }
    out = ROOT / "bench" / "results" / "site_rerun.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
