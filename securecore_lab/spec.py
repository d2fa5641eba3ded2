"""What the lab should look like, read from its Ansible inventory.

The inventory is the single source of truth: the segments (``site_segments``),
the hosts with their segment group, ``segment_ip`` and ``ansible_port``, and
the lab's own settings (``lab_name``, ``lab_image``, ``lab_debian_mirror``).
It is read with ``ansible-inventory`` so that the lab sees exactly what the
playbooks will see.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from securecore_lab.errors import LabError

DEFAULT_MIRROR = "http://deb.debian.org/debian"
# The hardening role's kernel parameters (hardening_sysctl), for those that belong to
# a network namespace: a container's /proc/sys is read-only, so the role's sysctl.d
# file cannot apply them there, and the lab manager sets them instead, in the
# container's own namespace, from outside (manager._set_network_sysctls).
# The rest (kernel.*, fs.*, net.core.*) are the container host's kernel's.
HARDENING_DEFAULTS = Path(__file__).resolve().parents[1] / "roles/hardening/defaults/main.yml"
NAMESPACED_SYSCTLS = ("net.ipv4.", "net.ipv6.")


@dataclass(frozen=True)
class Segment:
    name: str
    vlan: int
    network: ipaddress.IPv4Network

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        # podman puts the bridge (the controller's side) on the first address.
        return next(self.network.hosts())


@dataclass(frozen=True)
class LabHost:
    name: str
    segment: str
    address: ipaddress.IPv4Address
    ssh_port: int
    user: str


@dataclass(frozen=True)
class LabSpec:
    inventory: Path
    name: str
    image: str
    mirror: str
    segments: dict[str, Segment]
    hosts: list[LabHost]
    # The network parameters every container is created with (NAMESPACED_SYSCTLS).
    network_sysctls: dict[str, str] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        """Files the lab makes (SSH key, known_hosts); removed by ``down``."""
        return self.inventory / ".state"

    @property
    def ssh_key(self) -> Path:
        return self.state_dir / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def label(self) -> str:
        """The podman label that marks everything this lab made."""
        return f"io.securecore_lab={self.name}"

    def network_name(self, segment: str) -> str:
        return f"{self.name}-{segment}"

    def container_name(self, host: str) -> str:
        return f"{self.name}-{host}"


def read_inventory(inventory: Path) -> dict[str, Any]:
    """Return ``ansible-inventory --list`` for ``inventory`` as a dict."""
    executable = shutil.which("ansible-inventory")
    if executable is None:
        raise LabError(
            "'ansible-inventory' was not found on PATH; activate the project's "
            "virtualenv (. .venv/bin/activate) or run through scripts/run"
        )
    if not inventory.is_dir():
        raise LabError(f"inventory {inventory} does not exist or is not a directory")
    proc = subprocess.run(
        [executable, "-i", str(inventory), "--list"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise LabError(f"ansible-inventory could not read {inventory}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


# The ports the kernel gives outgoing connections: a lab port in this range can be
# taken (or held in TIME_WAIT for a minute) by any connection the machine made.
EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_ports() -> tuple[int, int] | None:
    """This machine's ephemeral port range, or None where it cannot be read."""
    try:
        low, high = EPHEMERAL_PORTS.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return None


def load_spec(inventory: Path) -> LabSpec:
    """Read the lab inventory and return the lab it describes."""
    inventory = inventory.resolve()
    data = read_inventory(inventory)
    hostvars: dict[str, dict[str, Any]] = data.get("_meta", {}).get("hostvars", {})
    if not hostvars:
        raise LabError(f"inventory {inventory} has no hosts")
    some_host = next(iter(hostvars.values()))

    def site_var(name: str, default: Any = None) -> Any:
        value = some_host.get(name, default)
        if value is None:
            raise LabError(f"{inventory}: variable '{name}' is not set (group_vars/all)")
        return value

    segments: dict[str, Segment] = {}
    for seg_name, seg in dict(site_var("site_segments")).items():
        where = f"{inventory}: site_segments.{seg_name}"
        try:
            network = ipaddress.IPv4Network(str(seg["cidr"]), strict=True)
            vlan = int(seg["vlan"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LabError(f"{where} is invalid ({exc}); run playbooks/preflight.yml") from exc
        segments[seg_name] = Segment(seg_name, vlan, network)

    hosts: list[LabHost] = []
    for host_name, hv in sorted(hostvars.items()):
        member_of = [s for s in segments if host_name in _group_hosts(data, s)]
        if len(member_of) != 1:
            raise LabError(
                f"{inventory}: host '{host_name}' must be in exactly one segment group "
                f"({', '.join(segments)}), found {member_of or 'none'}"
            )
        try:
            address = ipaddress.IPv4Address(str(hv["segment_ip"]))
            port = int(hv["ansible_port"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LabError(
                f"{inventory}: host '{host_name}' needs segment_ip and ansible_port ({exc})"
            ) from exc
        ephemeral = ephemeral_ports()
        if ephemeral and ephemeral[0] <= port <= ephemeral[1]:
            raise LabError(
                f"{inventory}: host '{host_name}' ansible_port {port} is in this machine's "
                f"ephemeral port range {ephemeral[0]}-{ephemeral[1]} "
                f"({EPHEMERAL_PORTS}): any outgoing connection may hold it when the lab "
                "starts, and podman then cannot publish it; choose a port outside it"
            )
        if address not in segments[member_of[0]].network:
            raise LabError(
                f"{inventory}: host '{host_name}' segment_ip {address} is outside "
                f"{member_of[0]} ({segments[member_of[0]].network})"
            )
        hosts.append(
            LabHost(host_name, member_of[0], address, port, str(hv.get("ansible_user", "ansible")))
        )

    return LabSpec(
        inventory=inventory,
        name=str(site_var("lab_name")),
        image=str(site_var("lab_image")),
        mirror=str(some_host.get("lab_debian_mirror") or DEFAULT_MIRROR),
        segments=segments,
        hosts=hosts,
        network_sysctls=network_sysctls(inventory, some_host.get("hardening_sysctl")),
    )


def network_sysctls(inventory: Path, from_inventory: Any) -> dict[str, str]:
    """The per-namespace network parameters of hardening_sysctl: the inventory's, when it
    sets the variable, else the hardening role's defaults."""
    where = f"{inventory}: hardening_sysctl"
    if from_inventory is None:
        where = f"{HARDENING_DEFAULTS}: hardening_sysctl"
        try:
            from_inventory = yaml.safe_load(HARDENING_DEFAULTS.read_text())["hardening_sysctl"]
        except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
            raise LabError(f"{where} could not be read ({exc})") from exc
    if not isinstance(from_inventory, dict):
        raise LabError(f"{where} must be a mapping of parameter: value")
    wanted = {}
    for key, value in sorted(from_inventory.items()):
        if str(key).startswith(NAMESPACED_SYSCTLS):
            if isinstance(value, (dict, list)) or value is None:
                raise LabError(f"{where}.{key}: {value!r} is not a value for a kernel parameter")
            wanted[str(key)] = str(value)
    return wanted


def _group_hosts(data: dict[str, Any], group: str) -> set[str]:
    """Every host in ``group`` and its child groups."""
    entry = data.get(group, {})
    found = set(entry.get("hosts", []))
    for child in entry.get("children", []):
        found |= _group_hosts(data, child)
    return found
