"""site.yml on the converged site, twice more (REQ-OPS-2): run again, it changes
nothing; run in check mode, every task runs without failing and none says it would
change anything, so an operator can ask any site what a run would do before running it.

These runs only read the hosts when the site is as its last run left it, so they start
with the session, one after the other, and run beside the read-only checks
(BACKGROUND, tests/support/background.py); each run's output is kept in
output/logs/site-{again,check}-*.log, with its slowest tasks at the end.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.support import background
from tests.support.commands import ROOT, ansible_env, play_recap

RUN_SECONDS = 1200
RUNS = {"again": [], "check": ["--check"]}


def _site_run(name: str) -> tuple[int, Path]:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    log = ROOT / "output" / "logs" / f"site-{name}-{stamp}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = ansible_env(
        ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "plugins" / "callback"),
        ANSIBLE_CALLBACKS_ENABLED="task_durations",
    )
    command = ["ansible-playbook", *RUNS[name], "-i", "inventories/lab", "playbooks/site.yml"]
    with log.open("w") as out:
        proc = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=RUN_SECONDS,
            check=False,
        )
    return proc.returncode, log


def _site_runs() -> dict[str, tuple[int, Path]]:
    # One after the other, the check-mode run last, as an operator would.
    return {name: _site_run(name) for name in RUNS}


BACKGROUND = _site_runs


def _assert_clean(name: str, what: str) -> None:
    runs = background.result(__name__, _site_runs, timeout=2 * RUN_SECONDS + 60)
    returncode, log = runs[name]
    output = log.read_text()
    recap = play_recap(output)
    assert returncode == 0, f"{what} exited {returncode} (see {log}):\n{output[-4000:]}"
    assert recap, f"no play recap in {log}"
    troubled = {
        host: counts
        for host, counts in recap.items()
        if counts.get("failed") or counts.get("unreachable") or counts.get("changed")
    }
    # A working tree changed since the site's last run (a developer's lab) is a new
    # configuration and release: its changes are real, and reported here as such.
    assert not troubled, f"{what} on the converged site (see {log}): {troubled}"


def test_a_second_run_changes_nothing() -> None:
    _assert_clean("again", "site.yml run again")


def test_a_check_mode_run_fails_nothing_and_changes_nothing() -> None:
    _assert_clean("check", "site.yml --check")
