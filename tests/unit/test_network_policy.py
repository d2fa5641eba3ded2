"""The firewall policy compiler of roles/network_segments."""

from __future__ import annotations

import pytest

from tests.support import roleplugins

policy = roleplugins.load("network_segments", "filter_plugins", "network_policy")
SEGMENTS = {
    "dmz": {"vlan": 100, "cidr": "10.1.100.0/24"},
    "core": {"vlan": 200, "cidr": "10.1.200.0/24"},
    "plugin": {"vlan": 300, "cidr": "10.1.30.0/24"},
}
ZONES = {
    "core": {"egress": "open", "rules": [{"name": "api", "ports": [8443], "from": ["dmz"]}]},
    "plugin": {
        "egress": "restricted",
        "rules": [{"name": "to-core", "direction": "out", "ports": ["8443"], "to": ["core"]}],
    },
}
MGMT = ["10.1.250.0/24"]


def compile_for(zone: str, site=None, host=None, zones=ZONES, mgmt=MGMT) -> dict:
    return policy.compile_firewall(SEGMENTS, zone, zones, site, host, mgmt)


def test_layers_apply_in_order_site_zone_host() -> None:
    site = [{"name": "node-exporter", "ports": [9100], "from": ["10.1.250.0/24"]}]
    host = [{"name": "replication", "ports": ["5432"], "from": ["core"]}]
    fw = compile_for("core", site, host)
    assert fw["input"] == [
        'ip saddr { 10.1.250.0/24 } tcp dport { 9100 } accept comment "node-exporter"',
        'ip saddr { 10.1.100.0/24 } tcp dport { 8443 } accept comment "api"',
        'ip saddr { 10.1.200.0/24 } tcp dport { 5432 } accept comment "replication"',
    ]
    assert fw["output"] == [] and fw["egress"] == "open"


def test_restricted_zone_compiles_outbound_rules() -> None:
    fw = compile_for("plugin")
    assert fw["egress"] == "restricted"
    assert fw["output"] == [
        'ip daddr { 10.1.200.0/24 } tcp dport { 8443 } accept comment "to-core"'
    ]


def test_any_source_has_no_address_match() -> None:
    zones = {"dmz": {"rules": [{"name": "https", "ports": [443], "from": "any", "proto": "tcp"}]}}
    assert compile_for("dmz", zones=zones)["input"] == ['tcp dport { 443 } accept comment "https"']


def test_a_rule_from_an_empty_list_admits_nobody() -> None:
    """The edge's addresses when the edge group has no hosts: the rule is left out,
    never widened to any source."""
    zones = {
        "core": {
            "rules": [
                {"name": "from-edge", "ports": [8443], "from": []},
                {"name": "from-one-edge", "ports": [8443], "from": ["10.1.100.10/32"]},
            ]
        }
    }
    assert compile_for("core", zones=zones)["input"] == [
        'ip saddr { 10.1.100.10/32 } tcp dport { 8443 } accept comment "from-one-edge"'
    ]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {"name": "x", "ports": [70000], "from": ["dmz"]},
            "network_segments_host_rules[0] (x).ports: port '70000' is outside 1-65535",
        ),
        (
            {"name": "x", "ports": ["http"], "from": ["dmz"]},
            "network_segments_host_rules[0] (x).ports: port 'http' is not a number",
        ),
        (
            {"name": "x", "ports": [80], "from": ["mgmt"]},
            "network_segments_host_rules[0] (x).from: 'mgmt' is neither a segment",
        ),
        (
            {"name": "x", "ports": [80], "from": ["10.1.1.1/24"]},
            "network_segments_host_rules[0] (x).from: '10.1.1.1/24' is neither a segment",
        ),
        (
            {"name": "x", "proto": "sctp", "ports": [80]},
            "network_segments_host_rules[0] (x): proto 'sctp' must be one of tcp, udp",
        ),
        (
            {"name": "x", "ports": [80], "to": ["core"]},
            "network_segments_host_rules[0] (x): an inbound rule takes 'from', not 'to'",
        ),
        (
            {"name": "Bad Name", "ports": [80]},
            "network_segments_host_rules[0]: name 'Bad Name' must be lower case",
        ),
        ({"name": "x", "port": 80}, "network_segments_host_rules[0]: unknown key(s) port"),
        (
            {"name": "x", "from": ["dmz"]},
            "network_segments_host_rules[0] (x).ports: ports is required",
        ),
    ],
)
def test_bad_rules_are_named_with_their_layer(rule: dict, message: str) -> None:
    with pytest.raises(policy.PolicyError) as error:
        compile_for("core", host=[rule])
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("mgmt", [[], ["any"], None])
def test_management_networks_are_required(mgmt) -> None:
    with pytest.raises(policy.PolicyError, match="network_segments_management_cidrs"):
        compile_for("core", mgmt=mgmt)


def test_unknown_zone_is_an_error() -> None:
    with pytest.raises(policy.PolicyError, match="no policy for zone 'dr_core'"):
        compile_for("dr_core")


@pytest.mark.parametrize(
    ("address", "allowed"),
    [("10.1.250.7", True), ("10.1.251.7", False), ("", False), ("garbage", False)],
)
def test_ssh_lockout_guard(address: str, allowed: bool) -> None:
    assert policy.ssh_allowed_from(compile_for("core"), address) is allowed


def test_vlan_interface_for_segment() -> None:
    assert policy.vlan_interface(SEGMENTS, "core", "10.1.200.11", "eth0") == {
        "name": "vlan200",
        "id": 200,
        "parent": "eth0",
        "segment": "core",
        "address": "10.1.200.11/24",
        "network": "10.1.200.0/24",
    }
    with pytest.raises(policy.PolicyError, match="outside segment core"):
        policy.vlan_interface(SEGMENTS, "core", "10.1.100.11", "eth0")
