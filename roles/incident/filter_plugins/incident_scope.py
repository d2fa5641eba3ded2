"""Which hosts an incident action may take: checked before anything changes (REQ-IR-3).

`incident_scope_problems` returns every reason to refuse a request, each naming
the host or the value and why: an id not of the form INC-YYYY-NNNN, no host,
a host the inventory does not have, a host of a protected group (the management
host: the operators' and the controller's way in, the logs and the monitoring),
the controller itself, and a host the controller reaches other hosts through
(a jump host in their SSH arguments): quarantining it would lock the operators
out of the very hosts they must investigate.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# The one form of an incident id (securecore.incidents.model.ID_PATTERN says the same,
# for the service; the playbooks run on the controller without the package).
INCIDENT_ID = re.compile(r"^INC-[0-9]{4}-[0-9]{4,6}$")
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}


def _jump_hosts(arguments: str) -> set[str]:
    """The hosts an SSH argument string jumps through (-J a,b / ProxyJump=a / ProxyCommand
    ssh ... a): user@ and :port stripped."""
    try:
        words = shlex.split(arguments or "")
    except ValueError:
        return set()
    found = set()
    for index, word in enumerate(words):
        value = None
        if word == "-J" and index + 1 < len(words):
            value = words[index + 1]
        elif word.startswith("-J") and len(word) > 2:
            value = word[2:]
        elif word == "-o" and index + 1 < len(words):
            key, _, option = words[index + 1].partition("=")
            if key.lower() == "proxyjump":
                value = option
            elif key.lower() == "proxycommand":
                found |= {w for w in shlex.split(option) if not w.startswith("-")}
        if value:
            for hop in value.split(","):
                found.add(hop.rpartition("@")[2].split(":")[0].strip("[]"))
    return found


def incident_scope_problems(
    incident: Any,
    hosts: Any,
    hostvars: Mapping[str, Mapping[str, Any]],
    groups: Mapping[str, Sequence[str]],
    protected_groups: Iterable[str],
) -> list[str]:
    problems = []
    if not incident_id_valid(incident):
        problems.append(f"incident: {incident!r} is not an incident id (INC-YYYY-NNNN)")
    if isinstance(hosts, str) or not isinstance(hosts, Sequence) or not hosts:
        return [*problems, 'hosts: give a list of inventory hosts, e.g. "hosts": ["plugin-01"]']
    known = set(groups.get("all", []))
    protected = {host: group for group in protected_groups for host in groups.get(group, []) or []}
    # Every host another host is reached through, by any name or address it goes by.
    jumps: dict[str, set[str]] = {}
    for name, variables in hostvars.items():
        arguments = " ".join(
            str(variables.get(key) or "")
            for key in ("ansible_ssh_common_args", "ansible_ssh_extra_args", "ansible_ssh_args")
        )
        for hop in _jump_hosts(arguments):
            jumps.setdefault(hop, set()).add(name)
    for host in hosts:
        if not isinstance(host, str) or host not in known:
            problems.append(f"hosts: {host!r} is not a host of the inventory")
            continue
        variables = hostvars.get(host, {})
        if host in protected:
            problems.append(
                f"hosts: {host} is in group {protected[host]}, which incident actions never "
                "take (the management host is the operators' and the controller's way in)"
            )
        # An address on the controller does not make a host the controller: the lab's
        # hosts are reached through ports forwarded on 127.0.0.1.
        if variables.get("ansible_connection") == "local" or host in LOCAL_NAMES:
            problems.append(f"hosts: {host} is the controller itself (a local connection)")
        address = str(variables.get("ansible_host", host))
        reached = sorted(set().union(*(jumps.get(n, set()) for n in {host, address})) - {host})
        if reached:
            problems.append(
                f"hosts: {host} is the controller's way to {', '.join(reached)} "
                "(a jump host in their SSH arguments): containing it would lock them out"
            )
    return problems


def incident_id_valid(incident: Any) -> bool:
    return isinstance(incident, str) and INCIDENT_ID.fullmatch(incident) is not None


def incident_address_allowed(address: Any, networks: Iterable[str]) -> bool:
    """Whether ADDRESS (the controller's, as the host sees it) is in one of NETWORKS."""
    try:
        ip = ipaddress.ip_address(str(address).strip())
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(str(n), strict=False) for n in networks)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "incident_scope_problems": incident_scope_problems,
            "incident_id_valid": incident_id_valid,
            "incident_address_allowed": incident_address_allowed,
        }
