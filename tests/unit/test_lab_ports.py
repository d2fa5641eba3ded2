"""The lab's SSH ports lie outside this machine's ephemeral port range (securecore_lab.spec):
inside it, any outgoing connection may hold one (a minute in TIME_WAIT after it closes),
and the lab cannot start. The integration tests, which open thousands of loopback
connections just before the lab is made, did exactly that to port 42204 (CI run ci-8)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from securecore_lab.errors import LabError
from securecore_lab.spec import ephemeral_ports, load_spec

INVENTORY = Path("inventories/lab")


def test_the_lab_s_ports_are_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_ports() or (32768, 60999)
    assert all(not low <= host.ssh_port <= high for host in load_spec(INVENTORY).hosts)


def test_a_port_in_the_ephemeral_range_is_refused_with_the_host_named(tmp_path) -> None:
    ephemeral = ephemeral_ports()
    if ephemeral is None:
        pytest.skip("this machine does not say its ephemeral port range")
    inventory = tmp_path / "lab"
    shutil.copytree(INVENTORY, inventory, ignore=shutil.ignore_patterns(".state"))
    hosts = inventory / "hosts.yml"
    hosts.write_text(
        hosts.read_text().replace("ansible_port: 61204", f"ansible_port: {ephemeral[0]}")
    )
    with pytest.raises(LabError, match=rf"host 'plugin-01' ansible_port {ephemeral[0]} is in"):
        load_spec(inventory)
