"""Benchmark: the full check set, seconds per host, on the lab and on throwaway hosts.

Two measurements, each a real gathering pass over SSH (ansible-runner, one
fact script per host, `forks` at once) followed by the evaluation of every
check; each host's own gathering time is what ansible-runner reports for it.

- The lab (REQ-PERF-7): under 5 s per host; all four service hosts in parallel
  in under 1.5 times the time of one. Needs the lab up and converged
  (`scripts/run lab`). Writes bench/results/compliance.json.

      .venv/bin/python bench/compliance.py [--inventory inventories/lab] [--rounds 3]

- Many hosts (REQ-PERF-13): at most 1 s per host for the whole check set, and
  25 hosts gathered and evaluated in at most 30 s. The bench makes the hosts
  itself: containers of the lab's image on a network of their own (its own
  lab, `securecore-bench`, made and removed with the lab manager; the
  hosts are not converged, which changes what the checks find, not what the
  gathering reads; apt's package cache is made on each, as on any host where
  apt has run). It reports how the time grows with the number of hosts,
  and where one host's gathering spends its time. Needs nothing running; the
  lab's image is built if missing. Writes bench/results/compliance-scale.json.

      .venv/bin/python bench/compliance.py --throwaway 25 [--steps 1,5,10,25]

Prints what it writes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compliance.catalog import load_catalogs  # noqa: E402
from compliance.checks import load_checks  # noqa: E402
from compliance.engine import run_checks  # noqa: E402
from compliance.gather.runner import gather, read_inventory  # noqa: E402
from securecore_lab.manager import Lab  # noqa: E402
from securecore_lab.spec import load_spec  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LAB_INVENTORY = ROOT / "inventories" / "lab"
# The throwaway hosts' own address plan and ports, apart from the lab's
# (10.210.0.0/16, ports 61201-61206) so that both can run at once.
THROWAWAY_NAME = "securecore-bench"
THROWAWAY_CIDR = "10.219.30.0/24"
THROWAWAY_FIRST_PORT = 61300


def timed(inventory: Path, limit: str | None, checks, forks: int = 8):
    """Seconds for one gathering pass and the evaluation, its results and its hosts."""
    started = time.perf_counter()
    hosts = gather(inventory, limit, forks=forks)
    results = run_checks(checks, hosts, [])
    elapsed = time.perf_counter() - started
    errors = [f"{h.host}: {h.error}" for h in hosts if h.error]
    if errors:
        raise SystemExit(f"gathering failed: {errors}")
    return elapsed, results, hosts


def machine() -> dict:
    return {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()}


def write(name: str, report: dict) -> None:
    out = RESULTS / name
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {out.relative_to(ROOT)}")


# --- the lab's hosts (REQ-PERF-7) --------------------------------------------------------


def bench_lab(inventory: Path, limit: str, rounds: int, checks) -> None:
    names = sorted(read_inventory(inventory, limit))
    single: dict[str, list[float]] = {name: [] for name in names}
    together: list[float] = []
    results: list = []
    for _ in range(rounds):
        for name in names:
            single[name].append(timed(inventory, name, checks)[0])
        elapsed, results, _ = timed(inventory, ",".join(names), checks)
        together.append(elapsed)
    one = {name: round(statistics.median(times), 2) for name, times in single.items()}
    slowest_one = max(one.values())
    all_hosts = round(statistics.median(together), 2)
    write(
        "compliance.json",
        {
            "benchmark": "compliance check (gather + evaluate), lab hosts",
            "machine": machine(),
            "rounds": rounds,
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
        },
    )


# --- throwaway hosts (REQ-PERF-13) -------------------------------------------------------


def throwaway_inventory(directory: Path, count: int) -> Path:
    """An inventory of COUNT hosts in the plugin zone, reached as the lab's are."""
    hosts = {
        f"bench-{number:02d}": {
            "segment_ip": f"{THROWAWAY_CIDR.rsplit('.', 1)[0]}.{10 + number}",
            "ansible_port": THROWAWAY_FIRST_PORT + number,
        }
        for number in range(1, count + 1)
    }
    lab = yaml.safe_load((LAB_INVENTORY / "group_vars" / "all" / "lab.yml").read_text())
    files = {
        "hosts.yml": {"all": {"children": {"lab": {"children": {"plugin": {"hosts": hosts}}}}}},
        "group_vars/all/lab.yml": {**lab, "lab_name": THROWAWAY_NAME},
        "group_vars/all/site.yml": {
            "site_name": "bench",
            "site_segments": {"plugin": {"vlan": 300, "cidr": THROWAWAY_CIDR}},
        },
        # How Ansible reaches them: the lab's own settings, key and known hosts
        # under this inventory's .state.
        "group_vars/lab/connection.yml": yaml.safe_load(
            (LAB_INVENTORY / "group_vars" / "lab" / "connection.yml").read_text()
        ),
    }
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(content, sort_keys=False))
    return directory


def host_seconds(hosts) -> dict:
    seconds = sorted(h.seconds for h in hosts)
    return {"median": round(statistics.median(seconds), 2), "max": seconds[-1]}


def bench_throwaway(count: int, steps: list[int], rounds: int, forks: int, checks) -> None:
    with tempfile.TemporaryDirectory(prefix="compliance-bench-") as directory:
        inventory = throwaway_inventory(Path(directory), count)
        lab = Lab(load_spec(inventory), log=lambda line: None)
        made = time.perf_counter()
        try:
            lab.up()
            # As on any host where apt has run since its lists changed: the image has the
            # lists but no package cache, which apt would otherwise build on every run.
            for host in lab.spec.hosts:
                name = lab.spec.container_name(host.name)
                lab.podman.run(["exec", name, "apt-cache", "gencaches"])
            made = time.perf_counter() - made
            names = sorted(read_inventory(inventory, None))
            timed(inventory, names[0], checks)  # SSH's first connections, not measured
            growth = []
            for step in steps:
                runs = [
                    timed(inventory, ",".join(names[:step]), checks, forks) for _ in range(rounds)
                ]
                seconds = statistics.median(run[0] for run in runs)
                median_run = min(runs, key=lambda run: abs(run[0] - seconds))
                growth.append(
                    {
                        "hosts": step,
                        "seconds": round(seconds, 2),
                        "seconds_per_host": round(seconds / step, 3),
                        "host_gathering_seconds": host_seconds(median_run[2]),
                        "results": len(median_run[1]),
                    }
                )
                print(f"{step} hosts: {seconds:.2f} s", file=sys.stderr)
            sections = timed(inventory, names[0], checks)[2][0].facts.get("_timings", {})
        finally:
            lab.down()
    largest = growth[-1]
    write(
        "compliance-scale.json",
        {
            "benchmark": "compliance check (gather + evaluate), throwaway hosts",
            "machine": machine(),
            "rounds": rounds,
            "forks": forks,
            "checks": len(checks),
            "seconds_to_make_the_hosts": round(made, 1),
            "growth": growth,
            "one_host_fact_script_seconds_by_section": sections,
            "targets": {"per_host_seconds": 1, "hosts": 25, "seconds_for_the_hosts": 30},
            "goals_met": {
                "per_host_at_most_1s": largest["seconds_per_host"] <= 1,
                "25_hosts_in_30s": largest["hosts"] >= 25 and largest["seconds"] <= 30,
            },
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", type=Path, default=LAB_INVENTORY)
    parser.add_argument("--rounds", type=int, default=3)
    # The lab's target is about the four service hosts; the management host
    # (which runs the scheduled checks) can be added with --limit all.
    parser.add_argument("--limit", default="dmz,core,plugin")
    parser.add_argument("--throwaway", type=int, metavar="N", help="make N hosts and measure them")
    parser.add_argument("--steps", help="host counts measured (default 1,5,10,N)")
    parser.add_argument("--forks", type=int, default=8, help="hosts gathered at once (as the CLI)")
    args = parser.parse_args()
    checks = load_checks(load_catalogs())
    if args.throwaway is None:
        bench_lab(args.inventory, args.limit, args.rounds, checks)
        return
    steps = sorted({int(s) for s in (args.steps or f"1,5,10,{args.throwaway}").split(",")})
    if not steps or steps[0] < 1 or steps[-1] > args.throwaway:
        parser.error(f"--steps must be host counts from 1 to {args.throwaway}")
    bench_throwaway(args.throwaway, steps, args.rounds, args.forks, checks)


if __name__ == "__main__":
    main()
