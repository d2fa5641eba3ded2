"""The lab's containers take the hardening role's network parameters (securecore_lab.spec):
the ones a network namespace owns, from the inventory or the role's defaults, and a clear
error for a value that is no kernel parameter's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from securecore_lab.errors import LabError
from securecore_lab.spec import HARDENING_DEFAULTS, network_sysctls

INVENTORY = Path("inventories/lab")


def test_the_role_s_defaults_when_the_inventory_sets_none() -> None:
    defaults = yaml.safe_load(HARDENING_DEFAULTS.read_text())["hardening_sysctl"]
    wanted = network_sysctls(INVENTORY, None)
    assert wanted["net.ipv4.ip_forward"] == "0"
    assert wanted["net.ipv4.conf.all.log_martians"] == "1"
    assert wanted == {
        k: str(v) for k, v in defaults.items() if k.startswith(("net.ipv4.", "net.ipv6."))
    }
    # The host kernel's parameters stay the container host's: a container cannot set
    # them, and podman would refuse to create it.
    assert not any(k.startswith(("kernel.", "fs.", "net.core.")) for k in wanted)


def test_the_inventory_s_own_values_win() -> None:
    wanted = network_sysctls(INVENTORY, {"net.ipv4.conf.all.rp_filter": 2, "kernel.sysrq": 0})
    assert wanted == {"net.ipv4.conf.all.rp_filter": "2"}


@pytest.mark.parametrize("bad", [["net.ipv4.ip_forward=0"], {"net.ipv4.ip_forward": [0]}])
def test_a_malformed_variable_is_named(bad) -> None:
    with pytest.raises(LabError, match="inventories/lab: hardening_sysctl"):
        network_sysctls(INVENTORY, bad)
