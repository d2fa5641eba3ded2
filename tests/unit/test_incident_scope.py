"""What an incident action may take: every refusal named before anything changes."""

from __future__ import annotations

import re

from securecore.incidents.model import ID_PATTERN
from tests.support import roleplugins

scope = roleplugins.load("incident", "filter_plugins", "incident_scope")
GROUPS = {
    "all": ["dmz-01", "core-01", "plugin-01", "plugin-02", "mgmt-01", "bastion", "localhost"],
    "management": ["mgmt-01"],
    "plugin": ["plugin-01", "plugin-02"],
}
HOSTVARS = {
    "plugin-01": {"ansible_host": "127.0.0.1"},  # the lab: forwarded ports on loopback
    "plugin-02": {"ansible_ssh_common_args": "-o ProxyJump=ops@bastion:2222"},
    "core-01": {"ansible_ssh_common_args": "-J 10.0.0.5"},
    "bastion": {"ansible_host": "10.0.0.5"},
    "localhost": {"ansible_connection": "local"},
}


def problems(incident="INC-2026-0001", hosts=("plugin-01",)) -> list[str]:
    listed = list(hosts) if isinstance(hosts, tuple) else hosts
    return scope.incident_scope_problems(incident, listed, HOSTVARS, GROUPS, ["management"])


def test_a_plugin_host_of_the_inventory_may_be_contained() -> None:
    assert problems() == []


def test_the_id_form_is_the_services() -> None:
    # One form: the role's check and the service's schema agree.
    assert scope.INCIDENT_ID.pattern == ID_PATTERN
    for wrong in ("INC-26-1", "inc-2026-0001", "INC-2026-0001; rm -rf /", "", None, 7):
        assert problems(incident=wrong) == [
            f"incident: {wrong!r} is not an incident id (INC-YYYY-NNNN)"
        ]


def test_unknown_hosts_and_no_hosts_are_named() -> None:
    assert problems(hosts=("plugin-01", "plugin-09")) == [
        "hosts: 'plugin-09' is not a host of the inventory"
    ]
    for empty in ([], "plugin-01", None):
        assert problems(hosts=empty) == [
            'hosts: give a list of inventory hosts, e.g. "hosts": ["plugin-01"]'
        ]


def test_the_operators_way_in_is_never_taken() -> None:
    found = problems(hosts=("mgmt-01", "localhost", "bastion"))
    assert len(found) == 3
    assert re.search(r"mgmt-01 is in group management", found[0])
    assert "localhost is the controller itself" in found[1]
    # bastion is core-01's jump by address and plugin-02's by name.
    assert "bastion is the controller's way to core-01, plugin-02" in found[2]


def test_every_problem_is_named_at_once() -> None:
    found = problems(incident="INC-1", hosts=("mgmt-01", "ghost"))
    assert [p.split(":")[0] for p in found] == ["incident", "hosts", "hosts"]


def test_the_controllers_address_must_be_a_management_one() -> None:
    networks = ["10.210.30.1/32", "10.210.10.0/24"]
    assert scope.incident_address_allowed("10.210.30.1", networks)
    assert scope.incident_address_allowed("10.210.10.77", networks)
    for outside in ("10.210.30.2", "", "not an address", None):
        assert not scope.incident_address_allowed(outside, networks)
