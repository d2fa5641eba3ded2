"""Prometheus's and Alertmanager's own tools for the monitoring tests.

scripts/bootstrap.sh unpacks them from the pinned Debian packages into the
virtualenv (.venv/lib/securecore-tools/bin, scripts/install-monitoring-tools.sh);
SECURECORE_TOOLS_DIR names another directory. A missing tool fails the test:
the rules and the configuration are not checked without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.commands import ROOT

RULES = ROOT / "roles/monitoring/files/securecore.rules.yml"
RULE_TESTS = ROOT / "tests/monitoring"


def tools_dir() -> Path:
    given = os.environ.get("SECURECORE_TOOLS_DIR")
    return Path(given) if given else Path(sys.prefix) / "lib/securecore-tools/bin"


def tool(name: str) -> str:
    """The path of NAME (promtool, amtool, prometheus-alertmanager, prometheus)."""
    found = tools_dir() / name
    if found.is_file() and os.access(found, os.X_OK):
        return str(found)
    on_path = shutil.which(name)
    if on_path:
        return on_path
    pytest.fail(
        f"{name} is missing: not in {tools_dir()} nor on PATH; run scripts/bootstrap.sh "
        "(scripts/install-monitoring-tools.sh DIR, SECURECORE_TOOLS_DIR=DIR/bin)"
    )


def render_monitoring(directory: Path, **extra: object) -> Path:
    """roles/monitoring's configuration files for the lab's hosts (and groups), rendered by Ansible
    with the role's defaults and EXTRA (extra variables) into DIRECTORY."""
    import json

    from tests.support.commands import run

    hosts = {
        "mgmt-01": ("management", "10.210.10.10"),
        "core-01": ("core", "10.210.200.11"),
        "core-02": ("core", "10.210.200.12"),
        "dmz-01": ("dmz", "10.210.100.10"),
        "plugin-01": ("plugin", "10.210.30.21"),
    }
    inventory = {
        "all": {
            "hosts": {
                name: {"segment_ip": ip, "ansible_python_interpreter": sys.executable}
                for name, (_, ip) in hosts.items()
            },
            "children": {
                "monitoring": {"hosts": {"mgmt-01": {}}},
                "core": {"hosts": {"core-01": {}, "core-02": {}}},
                "edge": {"hosts": {"dmz-01": {}}},
                "plugin": {"hosts": {"plugin-01": {}}},
                # The lab's producers of relayed and textfile series (inventories/lab).
                "database": {"hosts": {"core-01": {}, "core-02": {}}},
                "database_consensus": {"hosts": {"core-01": {}, "core-02": {}, "mgmt-01": {}}},
                "compliance_scheduler": {"hosts": {"mgmt-01": {}}},
                "database_backup": {"hosts": {"mgmt-01": {}}},
            },
        }
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "inventory.json").write_text(json.dumps(inventory))
    variables = {"render_dir": str(directory), **extra}
    run(
        "ansible-playbook",
        "-i",
        str(directory / "inventory.json"),
        "-e",
        json.dumps(variables),
        str(ROOT / "tests/monitoring/render.yml"),
    )
    return directory


def stop(process: subprocess.Popen) -> None:
    """Stop a tool's PROCESS started by a test: SIGTERM, then SIGKILL after 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def planted_textfile_dir(tmp_path: Path, staging: str) -> tuple[Path, Path]:
    """A textfile directory where another writer placed a link at STAGING (a staging
    name of old) to a file outside: (the directory, the file, which must stay as is)."""
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    (textfiles / staging).symlink_to(victim)
    return textfiles, victim
