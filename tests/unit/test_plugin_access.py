"""The plugin access policy (default deny, patterns) and the plugin endpoint networks."""

from __future__ import annotations

import pytest

from securecore.plugin_registry.access import (
    AccessConfigError,
    AccessPolicy,
    EndpointNotAllowedError,
    EndpointPolicy,
)

RULES = [
    {"principals": ["admin/*"], "plugins": ["*"], "operations": ["*"]},
    {"principals": ["dmz/dmz-01"], "plugins": ["plugin-01"], "operations": ["tickets.get"]},
]


def test_nothing_is_allowed_without_a_rule() -> None:
    assert AccessPolicy().decide("admin/alice", "plugin-01", "tickets.list") is None
    assert AccessPolicy.from_rules([]).decide("admin/alice", "plugin-01", "x") is None


@pytest.mark.parametrize(
    ("principal", "plugin", "op", "rule"),
    [
        ("admin/alice", "plugin-01", "tickets.update", 0),
        ("dmz/dmz-01", "plugin-01", "tickets.get", 1),
        ("dmz/dmz-01", "plugin-01", "tickets.update", None),
        ("dmz/dmz-01", "plugin-02", "tickets.get", None),
        ("dmz/dmz-02", "plugin-01", "tickets.get", None),
        ("plugin/plugin-01", "plugin-01", "tickets.get", None),
        ("ADMIN/alice", "plugin-01", "tickets.get", None),  # case matters
        ("admin", "plugin-01", "tickets.get", None),
    ],
)
def test_a_call_is_allowed_only_by_a_rule_naming_all_three(principal, plugin, op, rule) -> None:
    assert AccessPolicy.from_rules(RULES).decide(principal, plugin, op) == rule


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("admin/*", r"\[0\]: a table"),
        ({"principals": ["admin/*"], "plugins": ["*"]}, r"\[0\]\.operations: a non-empty list"),
        ({"principals": [], "plugins": ["*"], "operations": ["*"]}, r"principals: a non-empty"),
        ({"principals": "admin/*", "plugins": ["*"], "operations": ["*"]}, "principals"),
        ({"principals": ["a"], "plugins": ["*"], "operations": ["*"], "ops": 1}, "unknown key"),
    ],
)
def test_a_malformed_rule_is_named(rule, message) -> None:
    with pytest.raises(AccessConfigError, match=message):
        AccessPolicy.from_rules([rule])


def test_endpoints_must_be_in_the_plugin_networks_and_ports() -> None:
    policy = EndpointPolicy.from_config(["10.210.30.0/24", "127.0.0.1/32"], [9443])
    assert policy.resolve("https://10.210.30.21:9443") == ("10.210.30.21", 9443)
    assert policy.resolve("https://localhost:9443") == ("127.0.0.1", 9443)
    for endpoint, reason in [
        ("https://10.210.200.11:9443", "not in the plugin networks"),
        ("https://127.0.0.2:9443", "not in the plugin networks"),
        ("https://10.210.30.21:8443", "port 8443 is not a plugin port"),
        ("https://10.210.30.21", "port 443 is not a plugin port"),
        ("https://no-such-host.invalid:9443", "does not resolve"),
    ]:
        with pytest.raises(EndpointNotAllowedError, match=reason):
            policy.resolve(endpoint)
    with pytest.raises(EndpointNotAllowedError, match="allowed_networks is empty"):
        EndpointPolicy().resolve("https://127.0.0.1:9443")


@pytest.mark.parametrize(
    ("networks", "ports"), [(["10.0.0.0/33"], []), ([], [70000]), ([], [True])]
)
def test_malformed_networks_and_ports_are_named(networks, ports) -> None:
    with pytest.raises(AccessConfigError, match=r"\[plugins\] allowed_"):
        EndpointPolicy.from_config(networks, ports)
