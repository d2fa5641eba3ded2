"""The validator that checks rendered VLAN files before they are installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

VALIDATOR = (
    Path(__file__).resolve().parents[2]
    / "roles"
    / "network_segments"
    / "files"
    / "validate-vlan-config"
)


def validate(kind: str, text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "file"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, str(VALIDATOR), kind, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


GOOD = {
    "netdev": "[NetDev]\nName=vlan200\nKind=vlan\n\n[VLAN]\nId=200\n",
    "network": "[Match]\nName=vlan200\n\n[Network]\nAddress=10.1.200.11/24\n",
    "parent": "[Match]\nName=eth0\n\n[Network]\nVLAN=vlan200\n",
    "ifupdown": "auto vlan200\niface vlan200 inet static\n    address 10.1.200.11/24\n"
    "    vlan-raw-device eth0\n",
}


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_rendered_files_pass(kind: str, tmp_path: Path) -> None:
    assert validate(kind, GOOD[kind], tmp_path).returncode == 0


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        ("netdev", GOOD["netdev"].replace("Id=200", "Id=4095"), "[VLAN] Id='4095' must be"),
        ("netdev", GOOD["netdev"].replace("Kind=vlan", "Kind=bond"), "Kind= must be vlan"),
        (
            "netdev",
            GOOD["netdev"].replace("vlan200\nKind", "averyveryverylongname\nKind"),
            "is not a valid interface name",
        ),
        ("network", GOOD["network"].replace("/24", ""), "needs a prefix length"),
        (
            "network",
            GOOD["network"].replace("10.1.200.11", "10.1.300.11"),
            "Address='10.1.300.11/24'",
        ),
        ("network", "[Match]\nName=vlan200\n", "[Network] Address= is missing"),
        ("parent", "[Match\nName=eth0\n", "not a valid unit file"),
        (
            "ifupdown",
            GOOD["ifupdown"].replace("    vlan-raw-device eth0\n", ""),
            "vlan-raw-device is missing",
        ),
    ],
)
def test_broken_files_are_refused_with_the_reason(kind, text, message, tmp_path) -> None:
    proc = validate(kind, text, tmp_path)
    assert proc.returncode == 1
    assert message in proc.stderr and str(tmp_path / "file") in proc.stderr
