"""Validation of a site's inventory before anything is touched.

``site_inventory_problems`` returns every problem it finds (not only the
first), each naming the host or variable, the offending value and why it is
wrong, so that one preflight run tells an operator everything to fix. The
functions here are pure: they see only data, never a host.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SEGMENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,14}$")
SEGMENT_KEYS = frozenset({"vlan", "cidr", "description"})
VLAN_MIN, VLAN_MAX = 1, 4094


def _kind(value: Any) -> str:
    """A type name for messages (Ansible wraps values in its own tagged types)."""
    for kind, name in (
        (bool, "a boolean"),
        (int, "a number"),
        (float, "a number"),
        (Mapping, "a mapping"),
        (list, "a list"),
    ):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def _network(value: Any) -> tuple[ipaddress.IPv4Network | None, str | None]:
    """Parse an IPv4 network with host bits clear; return (network, why-not)."""
    if not isinstance(value, str):
        return None, f"must be a string like 10.1.100.0/24, got {_kind(value)}"
    if "/" not in value:
        return None, "has no prefix length (write it as ADDRESS/PREFIX, e.g. 10.1.100.0/24)"
    try:
        return ipaddress.IPv4Network(value, strict=True), None
    except ValueError as exc:
        text = str(exc)
        if "has host bits set" in text:
            fixed = ipaddress.IPv4Network(value, strict=False)
            return None, f"has host bits set (the network is {fixed})"
        return None, f"is not a valid IPv4 network ({text})"


def _segment_problems(
    segments: Any,
) -> tuple[list[str], dict[str, ipaddress.IPv4Network]]:
    problems: list[str] = []
    networks: dict[str, ipaddress.IPv4Network] = {}
    if not isinstance(segments, Mapping) or not segments:
        return [
            "site_segments: must be a non-empty mapping of segment name to "
            "{vlan, cidr} (group_vars/all)"
        ], networks
    vlans: dict[int, str] = {}
    for name, seg in segments.items():
        where = f"site_segments.{name}"
        if not isinstance(name, str) or not SEGMENT_NAME.match(name):
            problems.append(
                f"{where}: segment name {name!r} must be lower case letters, digits and _ "
                "(at most 15, starting with a letter); it names a group and an interface"
            )
        if not isinstance(seg, Mapping):
            problems.append(f"{where}: must be a mapping with vlan and cidr, got {seg!r}")
            continue
        for key in sorted(set(seg) - SEGMENT_KEYS):
            problems.append(f"{where}.{key}: unknown key (allowed: cidr, description, vlan)")
        vlan = seg.get("vlan")
        if vlan is None:
            problems.append(f"{where}.vlan: missing")
        elif isinstance(vlan, bool) or not isinstance(vlan, int):
            problems.append(f"{where}.vlan = {vlan!r}: must be an integer {VLAN_MIN}-{VLAN_MAX}")
        elif not VLAN_MIN <= vlan <= VLAN_MAX:
            problems.append(f"{where}.vlan = {vlan}: outside {VLAN_MIN}-{VLAN_MAX}")
        elif vlan in vlans:
            problems.append(f"{where}.vlan = {vlan}: already used by segment {vlans[vlan]}")
        else:
            vlans[vlan] = str(name)
        cidr = seg.get("cidr")
        if cidr is None:
            problems.append(f"{where}.cidr: missing")
            continue
        network, why = _network(cidr)
        if network is None:
            problems.append(f"{where}.cidr = {cidr!r}: {why}")
            continue
        for other, other_net in networks.items():
            if network.overlaps(other_net):
                problems.append(f"{where}.cidr = {cidr!r}: overlaps segment {other} ({other_net})")
        networks[str(name)] = network
    return problems, networks


def _host_problems(
    hostvars: Mapping[str, Mapping[str, Any]],
    groups: Mapping[str, Iterable[str]],
    segments: Mapping[str, Any],
    networks: Mapping[str, ipaddress.IPv4Network],
) -> list[str]:
    problems: list[str] = []
    segment_names = [str(s) for s in segments] if isinstance(segments, Mapping) else []
    for name in segment_names:
        if name not in groups:
            problems.append(
                f"site_segments.{name}: no inventory group named {name} holds its hosts"
            )
    members = {name: set(groups.get(name, ())) for name in segment_names}
    owner_of_ip: dict[ipaddress.IPv4Address, str] = {}
    for host in sorted(groups.get("all", ())):
        where = f"host {host}"
        in_segments = sorted(s for s in segment_names if host in members[s])
        if not in_segments:
            problems.append(
                f"{where}: is in no segment group (one of: {', '.join(segment_names) or 'none'})"
            )
            continue
        if len(in_segments) > 1:
            problems.append(
                f"{where}: is in several segment groups ({', '.join(in_segments)}); "
                "a host belongs to exactly one"
            )
            continue
        segment = in_segments[0]
        raw_ip = hostvars.get(host, {}).get("segment_ip")
        if raw_ip is None:
            problems.append(f"{where}: segment_ip is not set (segment {segment})")
            continue
        try:
            address = ipaddress.IPv4Address(str(raw_ip))
        except ValueError:
            problems.append(f"{where}: segment_ip = {raw_ip!r} is not a valid IPv4 address")
            continue
        network = networks.get(segment)
        if network is not None:
            if address not in network:
                problems.append(
                    f"{where}: segment_ip = {raw_ip} is outside its segment {segment} ({network})"
                )
            elif network.prefixlen < 31 and address in (
                network.network_address,
                network.broadcast_address,
            ):
                kind = "network" if address == network.network_address else "broadcast"
                problems.append(
                    f"{where}: segment_ip = {raw_ip} is the {kind} address of {segment} ({network})"
                )
        if address in owner_of_ip:
            problems.append(
                f"{where}: segment_ip = {raw_ip} is also used by host {owner_of_ip[address]}"
            )
        else:
            owner_of_ip[address] = host
    return problems


def _secret_problems(
    hostvars: Mapping[str, Mapping[str, Any]],
    groups: Mapping[str, Iterable[str]],
    required: Any,
) -> list[str]:
    problems: list[str] = []
    for entry in required or ():
        var, group = entry.get("var"), entry.get("group", "all")
        role = entry.get("role", "site")
        hosts = sorted(groups.get(group, ()))
        # A controller secret (the CA passphrase) is one value for the site:
        # checking it on one host says all, and one message is enough.
        if entry.get("controller"):
            hosts = hosts[:1]
        for host in hosts:
            # Only whether it is set is reported; a secret's value never is.
            try:
                value = hostvars.get(host, {}).get(var)
            except Exception as exc:
                problems.append(
                    f"host {host}: secret {var} cannot be resolved ({type(exc).__name__})"
                )
                continue
            if value is None or (isinstance(value, str) and not value.strip()):
                if entry.get("controller"):
                    problems.append(
                        f"secret {var} is not set (required by {role} on the controller; "
                        "put it in ansible-vault)"
                    )
                    continue
                problems.append(
                    f"host {host}: secret {var} is not set (required by {role} for group "
                    f"{group}; put it in ansible-vault)"
                )
    return problems


def _quorum_problems(
    groups: Mapping[str, Iterable[str]], database_group: str, consensus_group: str
) -> list[str]:
    """The replicated database needs a consensus store that survives one lost member:
    an odd number (at least 3) of etcd members, among them every database node. Two
    nodes alone can never tell a dead peer from a cut link."""
    database = list(groups.get(database_group) or [])
    if not database:
        return []  # no replicated database on this site
    consensus = list(groups.get(consensus_group) or [])
    problems = []
    if len(database) < 2:
        problems.append(
            f"group {database_group}: {len(database)} host ({', '.join(database)}); "
            "a replicated database needs at least 2"
        )
    if len(consensus) < 3 or len(consensus) % 2 == 0:
        problems.append(
            f"group {consensus_group}: {len(consensus)} hosts ({', '.join(consensus) or 'none'}); "
            "the consensus store needs an odd number, at least 3, so that losing one keeps a "
            "quorum: add a host that holds no data"
        )
    if missing := [host for host in database if host not in consensus]:
        problems.append(
            f"group {consensus_group}: must include every host of {database_group} "
            f"(missing: {', '.join(missing)})"
        )
    return problems


def _edge_problems(groups: Mapping[str, Iterable[str]], edge_group: str) -> list[str]:
    """The edge's hosts are DMZ hosts: the core trusts relayed identities from dmz/HOST
    principals only (roles/pki names a host's principal after its segment)."""
    dmz = set(groups.get("dmz") or [])
    outside = [host for host in groups.get(edge_group) or [] if host not in dmz]
    if not outside:
        return []
    return [
        f"group {edge_group}: {', '.join(outside)} not in the dmz segment; the DMZ edge "
        "runs on DMZ hosts (the core trusts relayed identities from dmz/HOST only)"
    ]


def site_inventory_problems(
    site_segments: Any,
    hostvars: Mapping[str, Mapping[str, Any]],
    groups: Mapping[str, Iterable[str]],
    required_secrets: Any = None,
    database_groups: Sequence[str] = ("database", "database_consensus"),
    edge_group: str = "edge",
) -> list[str]:
    """Every problem of the site's segments, hosts, secrets, database quorum and edge,
    in a stable order. DATABASE_GROUPS: the groups of the database nodes and of the
    consensus members (roles/postgresql_ha's postgresql_ha_*_group); EDGE_GROUP: the
    DMZ edge's (roles/edge)."""
    problems, networks = _segment_problems(site_segments)
    segments = site_segments if isinstance(site_segments, Mapping) else {}
    problems += _host_problems(hostvars, groups, segments, networks)
    problems += _secret_problems(hostvars, groups, required_secrets)
    problems += _quorum_problems(groups, *database_groups)
    problems += _edge_problems(groups, edge_group)
    return problems


class FilterModule:
    """Ansible filters of the preflight role."""

    def filters(self) -> dict[str, Any]:
        return {"site_inventory_problems": site_inventory_problems}
