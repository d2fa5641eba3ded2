"""Real traffic between the lab's zones after site.yml (roles/network_segments).

Connections are made from other lab hosts, so every packet crosses the zone
firewalls. The service ports are served by the site itself (the core service on
the core hosts, the plugin on plugin-01): a connection to them is the proof. Any
other port gets a test listener on the lab host for the length of the test.
"""

from __future__ import annotations

import contextlib
import json

import pytest

from tests.support.commands import run
from tests.support.labhosts import Listener, can_connect, lab_spec, ssh_from_controller

SPEC = lab_spec()
HOSTS = {h.name: h for h in SPEC.hosts}
CORE_PORT, PLUGIN_PORT, UNLISTED_PORT = 8443, 9443, 7001


def ip(name: str) -> str:
    return str(HOSTS[name].address)


def served(host, port: int) -> contextlib.AbstractContextManager:
    """The site's own server on PORT of HOST: it must be listening (then the firewall alone
    decides whether a connection opens)."""
    assert host.socket(f"tcp://0.0.0.0:{port}").is_listening, f"nothing serves port {port}"
    return contextlib.nullcontext()


def test_core_reaches_plugin_service_port(hosts):
    with served(hosts["plugin-01"], PLUGIN_PORT):
        assert can_connect(hosts["core-01"], ip("plugin-01"), PLUGIN_PORT, banner=False)
        assert can_connect(hosts["core-02"], ip("plugin-01"), PLUGIN_PORT, banner=False)


def test_plugin_cannot_reach_dmz_or_other_ports(hosts):
    # The edge (HAProxy) serves the DMZ's public port.
    with served(hosts["dmz-01"], 443), Listener(hosts["core-01"], UNLISTED_PORT):
        # The DMZ's public port is open to everyone but the plugin zone, whose
        # egress is closed: the packet never leaves plugin-01.
        assert can_connect(hosts["core-01"], ip("dmz-01"), 443, banner=False)
        assert not can_connect(hosts["plugin-01"], ip("dmz-01"), 443, banner=False)
        assert not can_connect(hosts["plugin-01"], ip("core-01"), UNLISTED_PORT)
        assert not can_connect(hosts["plugin-01"], ip("core-01"), 22)


def test_plugin_may_call_the_core_api_only(hosts):
    with served(hosts["core-01"], CORE_PORT):
        assert can_connect(hosts["plugin-01"], ip("core-01"), CORE_PORT, banner=False)


def test_in_the_dmz_only_the_edge_s_hosts_may_reach_the_core_api(hosts):
    """The core zone's rule names dmz-01 (the edge group's host), not the DMZ segment:
    another DMZ host would not get through (REQ-EDGE-8)."""
    ruleset = hosts["core-01"].check_output("nft list ruleset")
    rule = next(line for line in ruleset.splitlines() if '"core-api-from-edge"' in line)
    assert f"ip saddr {ip('dmz-01')} " in rule and "tcp dport 8443" in rule, rule
    assert "10.210.100.0/24" not in ruleset, ruleset


def test_dmz_reaches_core_only_on_the_core_service_port(hosts):
    with served(hosts["core-01"], CORE_PORT), Listener(hosts["core-01"], UNLISTED_PORT):
        assert can_connect(hosts["dmz-01"], ip("core-01"), CORE_PORT, banner=False)
        assert not can_connect(hosts["dmz-01"], ip("core-01"), UNLISTED_PORT)
        assert not can_connect(hosts["dmz-01"], ip("core-01"), 22)


def test_plugin_service_port_closed_to_dmz(hosts):
    with served(hosts["plugin-01"], PLUGIN_PORT):
        assert not can_connect(hosts["dmz-01"], ip("plugin-01"), PLUGIN_PORT, banner=False)


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_ssh_from_the_controller_still_works(name):
    host = HOSTS[name]
    proc = ssh_from_controller(
        SPEC, host, "-i", str(SPEC.ssh_key), "-o", "IdentitiesOnly=yes", command="hostname"
    )
    assert proc.returncode == 0 and proc.stdout.strip() == name


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_ruleset_loaded_with_default_drop(hosts, name):
    ruleset = hosts[name].check_output("nft list table inet securecore")
    assert "hook input priority filter; policy drop;" in ruleset
    assert "hook forward priority filter; policy drop;" in ruleset
    assert 'log prefix "securecore-drop-in: "' in ruleset
    expected_output_policy = "drop" if HOSTS[name].segment == "plugin" else "accept"
    assert f"hook output priority filter; policy {expected_output_policy};" in ruleset
    assert hosts[name].service("nftables").is_enabled


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_vlan_configuration_rendered_and_valid(hosts, name):
    host = hosts[name]
    vlan = SPEC.segments[HOSTS[name].segment].vlan
    netdev = host.file(f"/etc/systemd/network/20-securecore-vlan{vlan}.netdev")
    network = host.file(f"/etc/systemd/network/20-securecore-vlan{vlan}.network")
    assert netdev.contains(f"^Id={vlan}$")
    assert network.contains(f"^Address={HOSTS[name].address}/24$")
    for kind, f in (("netdev", netdev), ("network", network)):
        host.check_output(f"/usr/local/libexec/securecore/validate-vlan-config {kind} {f.path}")


def test_bad_host_rule_is_refused_and_the_loaded_rules_stay(hosts):
    before = hosts["core-01"].check_output("nft -s list table inet securecore")
    bad_rule = {"network_segments_host_rules": [{"name": "bad", "ports": [70000], "from": ["dmz"]}]}
    proc = run(
        "ansible-playbook",
        "-i",
        "inventories/lab",
        "playbooks/network.yml",
        "--limit",
        "core-01",
        "-e",
        json.dumps(bad_rule),
        check=False,
    )
    assert proc.returncode != 0
    assert (
        "network_segments_host_rules[0] (bad).ports: port '70000' is outside 1-65535" in proc.stdout
    )
    assert hosts["core-01"].check_output("nft -s list table inet securecore") == before
