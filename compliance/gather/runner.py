"""One read-only gathering pass per host, with ansible-runner over the playbooks' inventory.

The host fact script (compliance/gather/host_facts.py) is run on every host
at once (`ansible.builtin.script`, become, `forks` in parallel): one SSH
round trip per host, nothing installed, nothing changed. Facts that depend
on the inventory (is the host's address inside its zone's segment?) are
added here from the inventory's variables. A host that cannot be reached or
whose gathering fails is an error for that host, never a pass.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from compliance.errors import ComplianceError

HOST_FACTS_SCRIPT = Path(__file__).with_name("host_facts.py")
# The largest answer one host's gathering may give (the runner keeps it in memory).
EVENT_BYTES = 256 * 1024 * 1024


class GatherError(ComplianceError):
    """The inventory cannot be read; nothing was gathered."""


@dataclass
class HostFacts:
    host: str
    groups: list[str]
    facts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # unreachable, or the gathering failed
    seconds: float = 0.0


def _own_ansible_on_path() -> None:
    # The ansible executables installed with this package (the same virtualenv)
    # come first, even when `compliance` is run by its full path.
    own = str(Path(sys.executable).parent)
    paths = os.environ.get("PATH", "").split(os.pathsep)
    if own not in paths:
        os.environ["PATH"] = os.pathsep.join([own, *paths])


def _environment(inventory: Path) -> dict[str, str]:
    _own_ansible_on_path()
    # Gathering is one task per host, which Ansible's own linear strategy runs as
    # fast as any; the project's ansible.cfg may name Mitogen's for its playbooks,
    # which would also ask sudo of a local host already running as root.
    env = {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_STRATEGY": "linear"}
    # ansible-runner drops a task's whole result above MAX_EVENT_RES characters (700,000
    # by default): a host's forensic facts (a day of its journal) are larger than that.
    env["MAX_EVENT_RES"] = str(EVENT_BYTES)
    # Run from a project, its ansible.cfg (connection settings, known hosts) applies.
    config = os.environ.get("ANSIBLE_CONFIG") or next(
        (
            str(p / "ansible.cfg")
            for p in (Path.cwd(), *Path.cwd().parents)
            if (p / "ansible.cfg").is_file()
        ),
        None,
    )
    if config:
        env["ANSIBLE_CONFIG"] = config
        roles = Path(config).parent / "roles"
        if roles.is_dir():
            env["ANSIBLE_ROLES_PATH"] = str(roles)
    return env


def _ansible_runner() -> ModuleType:
    """ansible-runner, imported only to gather: verifying and reporting need the base
    install only (an auditor installs the package and verifies, nothing more)."""
    try:
        import ansible_runner
    except ImportError as error:
        raise GatherError(
            "gathering facts needs ansible-runner: install the scheduler extra "
            "(pip install 'securecore[scheduler]')"
        ) from error
    return ansible_runner


def read_inventory(inventory: Path, limit: str | None) -> dict[str, dict[str, Any]]:
    """hostname -> {"vars": hostvars, "groups": [...]} of the hosts LIMIT selects."""
    if not inventory.exists():
        raise GatherError(f"{inventory}: no such inventory")
    out, err = _ansible_runner().interface.get_inventory(
        action="list",
        inventories=[str(inventory)],
        response_format="json",
        quiet=True,
        envvars=_environment(inventory),
    )
    if not isinstance(out, dict) or "_meta" not in out:
        raise GatherError(f"{inventory}: ansible-inventory could not read it: {err or out}")
    hostvars = out["_meta"].get("hostvars", {})
    groups: dict[str, list[str]] = {}

    def walk(group: str, trail: list[str]) -> None:
        entry = out.get(group, {})
        for host in entry.get("hosts", []):
            groups.setdefault(host, []).extend(g for g in [*trail, group] if g not in ("all",))
        for child in entry.get("children", []):
            walk(child, [*trail, group])

    walk("all", [])
    hosts = {
        name: {"vars": hostvars.get(name, {}), "groups": sorted(set(groups.get(name, [])))}
        for name in sorted(set(hostvars) | set(groups))
    }
    if limit:
        wanted = {part.strip() for part in limit.split(",") if part.strip()}
        hosts = {h: v for h, v in hosts.items() if h in wanted or wanted & set(v["groups"])}
        if not hosts:
            raise GatherError(f"--limit {limit}: no host of {inventory} matches")
    return hosts


def segment_facts(name: str, host: dict[str, Any], addresses: list[str]) -> dict[str, Any]:
    """Whether the host's inventory address is in its segment and on the host."""
    segments = host["vars"].get("site_segments") or {}
    segment = next((g for g in host["groups"] if g in segments), None)
    address = host["vars"].get("segment_ip")
    facts: dict[str, Any] = {"segment": segment, "segment_ip": address}
    if segment and address:
        cidr = ipaddress.ip_network(str(segments[segment]["cidr"]), strict=False)
        inside = ipaddress.ip_address(str(address)) in cidr
        facts["address_in_segment"] = inside and str(address) in addresses
    return facts


def gather(
    inventory: str | Path,
    limit: str | None = None,
    forks: int = 8,
    timeout: int = 300,
    progress: Callable[[HostFacts, int, int], None] | None = None,
    script: Path = HOST_FACTS_SCRIPT,
) -> list[HostFacts]:
    """Facts of every host LIMIT selects, as SCRIPT prints them (the compliance facts by
    default); PROGRESS(host, done, total) hears each one end."""
    inventory = Path(inventory).resolve()
    hosts = read_inventory(inventory, limit)
    results = {name: HostFacts(name, info["groups"]) for name, info in hosts.items()}
    started: dict[str, float] = {}
    finished: list[str] = []

    def on_event(event: dict[str, Any]) -> bool:
        data = event.get("event_data", {})
        host = data.get("host")
        if host not in results:
            return True
        kind = event.get("event")
        if kind == "runner_on_start":
            started[host] = time.monotonic()
        elif kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            result = results[host]
            result.seconds = round(time.monotonic() - started.get(host, time.monotonic()), 2)
            answer = data.get("res", {})
            if kind == "runner_on_unreachable":
                result.error = f"unreachable: {answer.get('msg', '')}".strip()
            elif kind == "runner_on_failed":
                result.error = f"gathering failed: {answer.get('msg') or answer.get('stderr')}"
            elif not answer:
                result.error = (
                    f"its answer was dropped by ansible-runner (over {EVENT_BYTES} characters)"
                )
            else:
                try:
                    result.facts = json.loads(answer.get("stdout", ""))
                    if not isinstance(result.facts, dict):
                        raise ValueError("not an object")
                except (ValueError, RecursionError):
                    # What the host's python3 said instead (a traceback's last lines,
                    # a killed process's nothing): the facts script prints no secrets.
                    said = (answer.get("stderr") or answer.get("stdout") or "").strip()
                    result.error = "gathering printed no facts" + (
                        f"; the host's python3 said: ...{said[-400:]}"
                        if said
                        else f" and nothing else (exit {answer.get('rc', 'unknown')})"
                    )
            finished.append(host)
            if progress is not None:
                progress(result, len(finished), len(results))
        return True

    with tempfile.TemporaryDirectory(prefix="compliance-gather-") as private:
        _ansible_runner().run(
            private_data_dir=private,
            inventory=str(inventory),
            host_pattern=",".join(hosts),
            module="ansible.builtin.script",
            module_args=f"{script} executable=/usr/bin/python3",
            forks=forks,
            quiet=True,
            cmdline="--become",
            envvars=_environment(inventory),
            event_handler=on_event,
            timeout=timeout,
            json_mode=False,
        )
    for name, result in results.items():
        if result.error is None and not result.facts:
            result.error = "no answer from the gathering pass"
        if result.error is None and script == HOST_FACTS_SCRIPT:
            addresses = (result.facts.get("network") or {}).get("addresses", [])
            result.facts["network"] = {
                **(result.facts.get("network") or {}),
                **segment_facts(name, hosts[name], addresses),
            }
    return list(results.values())
