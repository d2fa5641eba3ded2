"""playbooks/preflight.yml as an operator runs it: on the controller only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.integration.helpers import ROOT, run

SEED_001_SEGMENTS = {
    "dmz": {"vlan": 100, "cidr": "10.1.100.0/24"},
    "core": {"vlan": 200, "cidr": "10.1.200.0/24"},
    "plugin": {"vlan": 300, "cidr": "10.1.300.0/24"},
    "dr_core": {"vlan": 210, "cidr": "10.2.200.0/24"},
}


@pytest.fixture
def production_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "production"
    shutil.copytree(ROOT / "inventories" / "production", copy)
    return copy


@pytest.mark.parametrize("inventory", ["lab", "production"])
def test_shipped_inventories_pass(inventory: str) -> None:
    proc = run("ansible-playbook", "-i", f"inventories/{inventory}", "playbooks/preflight.yml")
    assert "Inventory OK" in proc.stdout
    assert "failed=0" in proc.stdout


def test_seed_001_plugin_network_is_rejected_without_touching_a_host(
    production_copy: Path,
) -> None:
    site = production_copy / "group_vars" / "all" / "site.yml"
    site.write_text(site.read_text().replace("10.1.30.0/24", "10.1.300.0/24"))
    proc = run("ansible-playbook", "-i", str(production_copy), "playbooks/site.yml", check=False)
    assert proc.returncode != 0
    assert "site_segments.plugin.cidr = '10.1.300.0/24': is not a valid IPv4 network" in proc.stdout
    # Only the controller ran anything: no play reached a production host.
    recap = proc.stdout.split("PLAY RECAP", 1)[1]
    recap_hosts = [line.split()[0] for line in recap.splitlines() if " ok=" in line]
    assert recap_hosts == ["localhost"]
    assert "UNREACHABLE" not in proc.stdout
    assert proc.stdout.count("PLAY [") == 1


def test_every_problem_is_listed_in_one_message(production_copy: Path) -> None:
    segments = dict(SEED_001_SEGMENTS, core={"vlan": 5000, "cidr": "10.1.200.0/24"})
    proc = run(
        "ansible-playbook",
        "-i",
        str(production_copy),
        "playbooks/preflight.yml",
        "-e",
        json.dumps({"site_segments": segments}),
        check=False,
    )
    assert proc.returncode != 0
    assert "Preflight found 2 problem(s)" in proc.stdout
    assert "site_segments.core.vlan = 5000: outside 1-4094" in proc.stdout
    assert "site_segments.plugin.cidr = '10.1.300.0/24'" in proc.stdout
