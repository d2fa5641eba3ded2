"""Rate limits hold across worker processes: they share the policy database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.commands import ROOT

WORKER = """
import sys
from securecore.policy.ratelimit import Limit, take
from securecore.policy.state import PolicyState
state = PolicyState(sys.argv[1])
allowed = sum(take(state, "client:admin/alice", Limit(rate=0.001, burst=100), 1000.0).allowed
              for _ in range(60))
print(allowed)
"""


def test_four_workers_share_one_bucket(tmp_path: Path) -> None:
    database = tmp_path / "policy.db"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(database)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [worker.communicate(timeout=60) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), [err for _, err in results]
    # 240 attempts against a bucket of 100: exactly 100 pass, whichever worker asks.
    assert sum(int(out) for out, _ in results) == 100
