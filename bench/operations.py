"""Benchmark: what monitoring and central logs cost and how late they are, on the lab.

1. Prometheus on mgmt-01 (roles/monitoring: plain HTTP, no authentication, on the
   host's segment address :9090, which only mgmt-01 itself is sure to reach: every
   query runs there, with Python's urllib over the testinfra connection). Figures,
   all read from Prometheus's own metrics at the time of the run:
   - per scrape job: targets (and how many are up), the scrape duration
     (`scrape_duration_seconds`: mean and max over the job's targets at the last
     scrape, and the worst target's p95 over the last `--window` minutes,
     `max by (job) (quantile_over_time(0.95, scrape_duration_seconds[W]))`), and
     the samples each target's scrape returned (`scrape_samples_scraped`);
   - per rule group: the last evaluation's seconds
     (`prometheus_rule_group_last_duration_seconds`) against the group's interval
     (`prometheus_rule_group_interval_seconds`); and the single rule evaluation's
     quantiles that Prometheus keeps itself
     (`prometheus_rule_evaluation_duration_seconds{quantile=...}`);
   - storage: the series in the head block (`prometheus_tsdb_head_series`), samples
     appended per second (rate of `prometheus_tsdb_head_samples_appended_total`
     over 5 minutes) and so per day, the bytes of persisted blocks
     (`prometheus_tsdb_storage_blocks_bytes`; 0 while Prometheus has run under
     about two hours: nothing is compacted yet) and the retention from
     /etc/default/prometheus. The disk per day is an estimate: samples per day
     times 1 to 2 bytes per compressed sample (Prometheus's documented range for
     sizing), and from it the days until the size cap, to see whether the time
     or the size limit ends retention first. The samples scale with the scrape
     interval (`scrape_intervals`): the lab scrapes every 10 s
     (inventories/lab), the role's default is 30 s, a third of the samples.
     Prometheus's uptime is reported: a p95 over a window longer than the
     uptime covers the uptime only.
2. Central logs (roles/central_logs): `--markers` markers per host (default 20,
   `--spacing` seconds apart, every host at once) written with
   `logger -t securecore-bench-marker <uuid>`; mgmt-01 polls
   `journalctl --directory=/var/log/journal/remote` every 0.1 s (bounded by
   `--deadline`) from before the first marker is written. A marker's delay is the
   time mgmt-01's poll first saw it minus the entry's __REALTIME_TIMESTAMP (the
   writing host's clock; the lab's containers share the machine's clock). The
   delay therefore includes up to one poll interval plus the time of one
   journalctl run (`poll_seconds` in the result): it is an upper bound on the
   forwarding itself. Per host and overall: p50, p95, max (nearest rank: with 20
   a host, a host's p95 is its maximum), and markers lost (not seen by the
   deadline; must be 0), and any seen under another host name.

Read-only on the lab apart from the markers in the journals (and a file in
mgmt-01's /run, removed, that says the polling has started). On the lab every
container shares the machine's CPUs (`cpus` is in the result).

    .venv/bin/python bench/operations.py [--window 10] [--markers 20] [--spacing 0.2]

Needs the lab up and converged (`scripts/run lab`). Writes
bench/results/operations.json (and prints it); exits 1 if a marker was lost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.central_logs import find_markers  # noqa: E402
from tests.support.labhosts import connect, lab_spec  # noqa: E402

MGMT = "mgmt-01"
PROMETHEUS_PORT = 9090
TAG = "securecore-bench-marker"
# Prometheus's documented 1-2 bytes per sample after compression, for sizing.
BYTES_PER_SAMPLE = (1, 2)

# Runs each PromQL instant query given (a JSON object name -> query) against the
# Prometheus at argv[1] and prints name -> [(labels, value)].
QUERY = r"""
import json, sys, urllib.parse, urllib.request
base, queries, out = sys.argv[1], json.loads(sys.argv[2]), {}
for name, query in queries.items():
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    answer = json.load(urllib.request.urlopen(url, timeout=20))
    if answer["status"] != "success":
        raise SystemExit(f"{name}: {answer}")
    out[name] = [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]
print(json.dumps(out))
"""


def quantile(values: list[float], share: float) -> float | None:
    """Nearest rank of the sorted values; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)


def promql(mgmt, base: str, queries: dict[str, str]) -> dict[str, list]:
    command = f"python3 -c {shlex.quote(QUERY)} {base} {shlex.quote(json.dumps(queries))}"
    return json.loads(mgmt.check_output(command))


def by(rows: list, label: str) -> dict[str, float]:
    return {labels.get(label, ""): value for labels, value in rows}


def retention(mgmt) -> dict[str, str]:
    """--storage.tsdb.retention.* from /etc/default/prometheus (roles/monitoring)."""
    settings: dict[str, str] = {}
    text = mgmt.file("/etc/default/prometheus").content_string
    # ARGS="..." is one shell word: its flags are split again.
    for word in (w for line in shlex.split(text, comments=True) for w in line.split()):
        for flag in ("time", "size"):
            prefix = f"--storage.tsdb.retention.{flag}="
            if prefix in word:
                settings[flag] = word.split(prefix, 1)[1]
    return settings


def size_bytes(text: str) -> float | None:
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return None


def prometheus(mgmt, base: str, window: int) -> dict:
    rows = promql(
        mgmt,
        base,
        {
            "targets": "count by (job) (up)",
            "up": "sum by (job) (up)",
            "mean": "avg by (job) (scrape_duration_seconds)",
            "max": "max by (job) (scrape_duration_seconds)",
            "p95": f"max by (job) (quantile_over_time(0.95, scrape_duration_seconds[{window}m]))",
            "samples": "scrape_samples_scraped",
            "group_last": "prometheus_rule_group_last_duration_seconds",
            "group_interval": "prometheus_rule_group_interval_seconds",
            "rule_eval": "prometheus_rule_evaluation_duration_seconds",
            "head_series": "prometheus_tsdb_head_series",
            "appended": "rate(prometheus_tsdb_head_samples_appended_total[5m])",
            "blocks_bytes": "prometheus_tsdb_storage_blocks_bytes",
            "uptime": 'time() - process_start_time_seconds{job="prometheus"}',
            "intervals": "count by (interval) "
            '(prometheus_target_interval_length_seconds{quantile="0.5"})',
        },
    )
    jobs: dict[str, dict] = {}
    for job, count in sorted(by(rows["targets"], "job").items()):
        samples = {
            labels.get("host", labels.get("instance")): int(value)
            for labels, value in rows["samples"]
            if labels.get("job") == job
        }
        jobs[job] = {
            "targets": int(count),
            "up": int(by(rows["up"], "job").get(job, 0)),
            "scrape_seconds": {
                "mean": round(by(rows["mean"], "job")[job], 4),
                "max": round(by(rows["max"], "job")[job], 4),
                f"p95_{window}m_worst_target": round(by(rows["p95"], "job")[job], 4),
            },
            "samples_per_target": dict(sorted(samples.items())),
        }
    intervals = by(rows["group_interval"], "rule_group")
    groups = {
        group.split(";", 1)[-1]: {
            "last_seconds": round(seconds, 5),
            "interval_seconds": intervals.get(group),
        }
        for group, seconds in sorted(by(rows["group_last"], "rule_group").items())
    }
    # NaN (no evaluation in the summary's window) is left out.
    evaluation = {
        f"q{labels['quantile']}": round(value, 6)
        for labels, value in rows["rule_eval"]
        if value == value
    }
    per_second = sum(v for _, v in rows["appended"])
    per_day = per_second * 86400
    limits = retention(mgmt)
    cap = size_bytes(limits.get("size", ""))
    low, high = (per_day * b for b in BYTES_PER_SAMPLE)
    return {
        "address": base,
        "uptime_seconds": round(sum(v for _, v in rows["uptime"])),
        "scrape_intervals": sorted(by(rows["intervals"], "interval")),
        "scrape_jobs": jobs,
        "rule_groups": groups,
        "rule_evaluation_seconds": dict(sorted(evaluation.items())),
        "storage": {
            "head_series": int(sum(v for _, v in rows["head_series"])),
            "samples_appended_per_second": round(per_second, 1),
            "samples_per_day": round(per_day),
            "blocks_bytes": int(sum(v for _, v in rows["blocks_bytes"])),
            "estimated_disk_per_day_mb": [round(low / 2**20, 1), round(high / 2**20, 1)],
            "retention": limits,
            "days_until_size_cap": [round(cap / high), round(cap / low)] if cap and low else None,
        },
    }


def central_logs(hosts: dict, markers: int, spacing: float, deadline: float) -> dict:
    written = {name: [str(uuid.uuid4()) for _ in range(markers)] for name in hosts}
    owner = {m: name for name, ms in written.items() for m in ms}
    mgmt = hosts[MGMT]
    ready = f"/run/{TAG}.{uuid.uuid4()}"
    answer: dict = {}

    def find() -> None:
        answer.update(find_markers(mgmt, TAG, list(owner), deadline, ready))

    def write(name: str) -> None:
        hosts[name].check_output(
            f"for m in {' '.join(written[name])}; do logger -t {TAG} $m; sleep {spacing}; done"
        )

    finder = threading.Thread(target=find)
    finder.start()
    try:
        # Markers are written once the poll runs (its first pass must not see them late).
        limit = time.monotonic() + 30
        while mgmt.run(f"test -e {ready}").rc != 0:
            if time.monotonic() > limit or not finder.is_alive():
                raise RuntimeError("the finder on mgmt-01 did not start")
            time.sleep(0.1)
        writers = [threading.Thread(target=write, args=(name,)) for name in hosts]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        finder.join()
    finally:
        mgmt.run(f"rm -f {ready}")
    found = answer["found"]
    delays: dict[str, list[float]] = {name: [] for name in hosts}
    misnamed = 0
    for marker, entry in found.items():
        delays[owner[marker]].append(entry["seen"] - entry["written"])
        misnamed += entry["host"] != owner[marker]

    def summary(values: list[float], sent: int) -> dict:
        return {
            "sent": sent,
            "lost": sent - len(values),
            "p50": quantile(values, 0.5),
            "p95": quantile(values, 0.95),
            "max": round(max(values), 3) if values else None,
        }

    everything = [d for values in delays.values() for d in values]
    polls = answer["polls"]
    return {
        "markers_per_host": markers,
        "spacing_seconds": spacing,
        "poll_interval_seconds": 0.1,
        "poll_seconds": {
            "runs": len(polls),
            "mean": round(sum(polls) / len(polls), 3),
            "max": round(max(polls), 3),
        },
        "delay_seconds": {
            "overall": summary(everything, len(owner)),
            "per_host": {name: summary(delays[name], markers) for name in sorted(hosts)},
        },
        "under_another_host_name": misnamed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=10, help="minutes for the scrape p95")
    parser.add_argument("--markers", type=int, default=20, help="markers per host")
    parser.add_argument("--spacing", type=float, default=0.2, help="seconds between markers")
    parser.add_argument("--deadline", type=float, default=60, help="seconds to wait for them")
    args = parser.parse_args()
    spec = lab_spec()
    hosts = {host.name: connect(spec, host) for host in spec.hosts}
    address = next(h.address for h in spec.hosts if h.name == MGMT)
    base = f"http://{address}:{PROMETHEUS_PORT}"
    monitored = prometheus(hosts[MGMT], base, args.window)
    logs = central_logs(hosts, args.markers, args.spacing, args.deadline)
    result = {
        "benchmark": "operations",
        "machine": {
            "python": platform.python_version(),
            "system": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "lab_hosts": sorted(hosts),
        "prometheus": monitored,
        "central_logs": logs,
    }
    out = ROOT / "bench" / "results" / "operations.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    lost = logs["delay_seconds"]["overall"]["lost"]
    return 1 if lost or logs["under_another_host_name"] else 0


if __name__ == "__main__":
    sys.exit(main())
