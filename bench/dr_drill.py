"""Benchmark: the disaster-recovery drill (playbooks/dr-restore.yml) on the lab, timed.

Each round runs the drill as an operator would: the cold site's host (dr_core, core-03
in the lab) gets its HSM keys, the database restored from the off-site pgBackRest
repository it keeps, the core service, and the audit log verified against the cold
site's witness; the drill then stops the cold site again. The primary site is under load
meanwhile (an administrator's client on the DMZ host sending requests to both core
hosts, as in the failover benchmark), so that the RPO is that of a busy site. Per round,
from the drill's own report: the RTO (start to every cold-site host healthy, target 3600
s) and the RPO (start, taken as the moment of the disaster, less the arrival of the
newest WAL segment then in the off-site repository, target 900 s; REQ-HA-3), the audit
records restored and the gap to the witness's newest checkpoint. The first round on a
fresh lab also installs the packages (a cold host that has never run the service); later
rounds restore again over the same host. The benchmark fails when a round misses a
target.

    .venv/bin/python bench/dr_drill.py [--rounds 2]

Needs the lab up and converged (`scripts/run lab`). Writes bench/results/dr_drill.json
(and prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.database import ADDRESS, DATA_NODES  # noqa: E402
from tests.support.labhosts import connect, lab_spec  # noqa: E402
from tests.support.service_load import ServiceLoad  # noqa: E402


def drill() -> dict:
    reports = ROOT / "output" / "dr"
    before = set(reports.glob("drill-*.json"))
    subprocess.run(
        # The virtualenv running the benchmark has Ansible (.venv, as the docstring says).
        [str(Path(sys.executable).parent / "ansible-playbook"), "playbooks/dr-restore.yml"],
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=3600,
    )
    (report,) = set(reports.glob("drill-*.json")) - before
    return json.loads(report.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    spec = lab_spec()
    dmz = connect(spec, next(host for host in spec.hosts if host.name == "dmz-01"))
    rounds = []
    for number in range(1, args.rounds + 1):
        with ServiceLoad(dmz, [ADDRESS[name] for name in DATA_NODES]):
            report = drill()
        figures = {
            key: report[key]
            for key in (
                "rto_seconds",
                "rpo_seconds",
                "met",
                "backup",
                "audit_records_restored",
                "audit_verify",
                "audit_unwitnessed_tail",
                "audit_gap",
            )
        }
        rounds.append(figures)
        print(f"round {number}: {json.dumps(figures)}", flush=True)
    result = {
        "benchmark": "dr_drill",
        "machine": {"python": platform.python_version(), "system": platform.platform()},
        "rounds": rounds,
        "rto_s": {"max": max(r["rto_seconds"] for r in rounds), "target": 3600},
        "rpo_s": {"max": max(r["rpo_seconds"] for r in rounds), "target": 900},
        "all_met": all(r["met"] for r in rounds),
    }
    out = ROOT / "bench" / "results" / "dr_drill.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["all_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
