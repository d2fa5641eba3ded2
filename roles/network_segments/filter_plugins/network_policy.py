"""Compile a zone's firewall policy and a host's VLAN interface from data.

The firewall is described once, in layers that apply in order: site defaults,
then the zone's rules, then the host's own rules. ``compile_firewall`` checks
every rule (names, protocols, ports, addresses; segment names resolved to
their networks) and turns it into nftables statements, so the template only
places them. Errors name the layer, the rule and what is wrong.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

try:  # Ansible reports this type of error with its task context.
    from ansible.errors import AnsibleFilterError as PolicyError
except ImportError:  # pragma: no cover - used without Ansible (unit tests)

    class PolicyError(Exception):  # type: ignore[no-redef]
        pass


RULE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
RULE_KEYS = frozenset({"name", "direction", "proto", "ports", "from", "to", "action", "log"})
PROTOCOLS = ("tcp", "udp")
ACTIONS = ("accept", "drop", "reject")
IFNAME_MAX = 15


def _networks(
    values: Any, segments: Mapping[str, Any], where: str
) -> list[ipaddress.IPv4Network] | None:
    """Resolve a list of segment names, CIDRs or 'any' (None means any)."""
    if values in (None, "any", ["any"]):
        return None
    if isinstance(values, str) or not isinstance(values, Sequence):
        values = [values]
    networks = []
    for value in values:
        text = str(value)
        if text == "any":
            return None
        if text in segments:
            networks.append(ipaddress.IPv4Network(str(segments[text]["cidr"])))
            continue
        try:
            networks.append(ipaddress.IPv4Network(text, strict=True))
        except ValueError as exc:
            raise PolicyError(
                f"{where}: {text!r} is neither a segment ({', '.join(segments)}), "
                f"'any', nor an IPv4 network ({exc})"
            ) from exc
    return networks


def _ports(values: Any, where: str) -> list[str]:
    if values is None:
        raise PolicyError(f"{where}: ports is required for tcp and udp rules")
    if isinstance(values, (str, int)):
        values = [values]
    ports = []
    for value in values:
        text = str(value)
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
        if not match:
            raise PolicyError(f"{where}: port {text!r} is not a number or a range like 8000-8010")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if not (1 <= low <= high <= 65535):
            raise PolicyError(f"{where}: port {text!r} is outside 1-65535")
        ports.append(text)
    return ports


def _set(items: Iterable[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def compile_rule(rule: Any, segments: Mapping[str, Any], where: str) -> dict[str, str] | None:
    """One rule as {'chain': 'input'|'output', 'statement': nft text}; None for a rule
    whose peers are an empty list (e.g. the addresses of a group with no hosts): it
    admits nobody, so it is left out rather than widened."""
    if not isinstance(rule, Mapping):
        raise PolicyError(f"{where}: a rule must be a mapping, got {rule!r}")
    unknown = sorted(set(rule) - RULE_KEYS)
    if unknown:
        allowed = ", ".join(sorted(RULE_KEYS))
        raise PolicyError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {allowed})")
    name = str(rule.get("name", ""))
    if not RULE_NAME.match(name):
        raise PolicyError(f"{where}: name {name!r} must be lower case letters, digits and -")
    where = f"{where} ({name})"
    direction = str(rule.get("direction", "in"))
    if direction not in ("in", "out"):
        raise PolicyError(f"{where}: direction {direction!r} must be 'in' or 'out'")
    proto = str(rule.get("proto", "tcp"))
    if proto not in PROTOCOLS:
        raise PolicyError(f"{where}: proto {proto!r} must be one of {', '.join(PROTOCOLS)}")
    action = str(rule.get("action", "accept"))
    if action not in ACTIONS:
        raise PolicyError(f"{where}: action {action!r} must be one of {', '.join(ACTIONS)}")
    if direction == "in" and "to" in rule:
        raise PolicyError(f"{where}: an inbound rule takes 'from', not 'to'")
    if direction == "out" and "from" in rule:
        raise PolicyError(f"{where}: an outbound rule takes 'to', not 'from'")
    peer_key, addr_field = ("from", "saddr") if direction == "in" else ("to", "daddr")
    peers = _networks(rule.get(peer_key), segments, f"{where}.{peer_key}")
    if peers == []:
        return None
    parts = []
    if peers is not None:
        parts.append(f"ip {addr_field} {_set(str(n) for n in peers)}")
    parts.append(f"{proto} dport {_set(_ports(rule.get('ports'), f'{where}.ports'))}")
    if rule.get("log"):
        parts.append(f'log prefix "securecore-{action}-{name[:20]}: " level info')
    parts.append(action)
    parts.append(f'comment "{name}"')
    return {"chain": "input" if direction == "in" else "output", "statement": " ".join(parts)}


def compile_firewall(
    site_segments: Mapping[str, Any],
    zone: str,
    zones: Mapping[str, Any],
    site_rules: Sequence[Any] | None,
    host_rules: Sequence[Any] | None,
    management_cidrs: Sequence[Any],
) -> dict[str, Any]:
    """The complete, ordered policy of one host in ``zone``."""
    if zone not in zones:
        raise PolicyError(
            f"network_segments_zones: no policy for zone {zone!r} (have: {', '.join(zones)})"
        )
    zone_policy = zones[zone] or {}
    egress = str(zone_policy.get("egress", "open"))
    if egress not in ("open", "restricted"):
        raise PolicyError(
            f"network_segments_zones.{zone}.egress: {egress!r} must be 'open' or 'restricted'"
        )
    management = _networks(management_cidrs, {}, "network_segments_management_cidrs")
    if not management:
        raise PolicyError(
            "network_segments_management_cidrs: must list the networks SSH is allowed from "
            "(an empty list or 'any' would lock out or expose SSH)"
        )
    chains: dict[str, list[str]] = {"input": [], "output": []}
    layers = (
        ("network_segments_site_rules", site_rules or []),
        (f"network_segments_zones.{zone}.rules", zone_policy.get("rules") or []),
        ("network_segments_host_rules", host_rules or []),
    )
    for layer, rules in layers:
        for index, rule in enumerate(rules):
            compiled = compile_rule(rule, site_segments, f"{layer}[{index}]")
            if compiled is not None:
                chains[compiled["chain"]].append(compiled["statement"])
    return {
        "zone": zone,
        "egress": egress,
        "management": [str(n) for n in management],
        "input": chains["input"],
        "output": chains["output"],
    }


def ssh_allowed_from(policy: Mapping[str, Any], address: str) -> bool:
    """Whether the management set lets ``address`` reach SSH."""
    try:
        ip = ipaddress.IPv4Address(str(address).strip())
    except ValueError:
        return False
    return any(ip in ipaddress.IPv4Network(n) for n in policy["management"])


def vlan_interface(
    site_segments: Mapping[str, Any], segment: str, segment_ip: Any, parent: str
) -> dict[str, Any]:
    """The VLAN interface a host needs on its segment."""
    if segment not in site_segments:
        raise PolicyError(f"segment {segment!r} is not in site_segments")
    seg = site_segments[segment]
    network = ipaddress.IPv4Network(str(seg["cidr"]))
    address = ipaddress.IPv4Address(str(segment_ip))
    if address not in network:
        raise PolicyError(f"segment_ip {address} is outside segment {segment} ({network})")
    vlan = int(seg["vlan"])
    name = f"vlan{vlan}"
    if not parent or len(parent) > IFNAME_MAX:
        raise PolicyError(f"parent interface {parent!r} is not a valid interface name")
    return {
        "name": name,
        "id": vlan,
        "parent": parent,
        "segment": segment,
        "address": f"{address}/{network.prefixlen}",
        "network": str(network),
    }


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "network_segments_firewall": compile_firewall,
            "network_segments_ssh_allowed_from": ssh_allowed_from,
            "network_segments_vlan_interface": vlan_interface,
        }
