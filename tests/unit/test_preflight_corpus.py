"""Preflight's validation over a corpus of bad inventories.

Each case is a real Ansible YAML inventory, parsed by Ansible's own inventory
manager, so the validator sees exactly the groups and variables a playbook
run would give it. Every case asserts the exact list of problems reported.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.vars.manager import VariableManager

from tests.support import roleplugins

CORPUS = yaml.safe_load((Path(__file__).parent / "data" / "preflight_corpus.yml").read_text())


site_inventory = roleplugins.load("preflight", "filter_plugins", "site_inventory")

BASE_SEGMENTS = {
    "dmz": {"vlan": 100, "cidr": "10.1.100.0/24"},
    "core": {"vlan": 200, "cidr": "10.1.200.0/24"},
    "plugin": {"vlan": 300, "cidr": "10.1.30.0/24"},
}
BASE_HOSTS = {
    "dmz": {"dmz-01": "10.1.100.10"},
    "core": {"core-01": "10.1.200.11", "core-02": "10.1.200.12"},
    "plugin": {"plugin-01": "10.1.30.21"},
}


def build_inventory(case: dict[str, Any]) -> dict[str, Any]:
    """The base site with the case's changes applied, as a YAML inventory."""
    segments = copy.deepcopy(BASE_SEGMENTS)
    for name, seg in (case.get("segments") or {}).items():
        if seg is None:
            segments.pop(name, None)
        else:
            segments[name] = seg
    children: dict[str, Any] = {}
    for group, hosts in BASE_HOSTS.items():
        group_name = (case.get("groups") or {}).get(group, group)
        children[group_name] = {"hosts": {}}
        for host, address in hosts.items():
            address = (case.get("hosts") or {}).get(host, address)
            host_vars = {} if address is None else {"segment_ip": address}
            host_vars.update((case.get("host_vars") or {}).get(host, {}))
            children[group_name]["hosts"][host] = host_vars
    for group, body in (case.get("extra_inventory") or {}).items():
        children.setdefault(group, {"hosts": {}})["hosts"].update(body["hosts"])
    site_vars: dict[str, Any] = {}
    site_segments = case.get("site_segments", segments)
    if site_segments is not None:
        site_vars["site_segments"] = site_segments
    return {"all": {"vars": site_vars, "children": children}}


def problems_for(inventory_file: Path, secrets: list[dict[str, str]] | None) -> list[str]:
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(inventory_file)])
    variables = VariableManager(loader=loader, inventory=inventory)
    hosts = inventory.get_hosts()
    hostvars = {h.name: variables.get_vars(host=h) for h in hosts}
    groups = {name: [h.name for h in g.get_hosts()] for name, g in inventory.groups.items()}
    site_segments = inventory.groups["all"].get_vars().get("site_segments")
    return site_inventory.site_inventory_problems(site_segments, hostvars, groups, secrets)


def test_corpus_has_at_least_twenty_cases() -> None:
    assert len(CORPUS) >= 20
    assert len({case["name"] for case in CORPUS}) == len(CORPUS)


def test_base_site_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(build_inventory({}), sort_keys=False))
    assert problems_for(path, None) == []


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_bad_inventory_reports_exact_problems(case: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(build_inventory(case), sort_keys=False))
    assert problems_for(path, case.get("secrets")) == case["expect"]


def test_secret_values_never_appear_in_problems(tmp_path: Path) -> None:
    secret = "s3cr3t-Pin-value"
    case = {
        "hosts": {"core-02": "10.1.100.12"},
        "host_vars": {"core-01": {"hsm_user_pin": secret}},
    }
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(build_inventory(case), sort_keys=False))
    problems = problems_for(path, [{"var": "hsm_user_pin", "group": "core", "role": "hsm"}])
    assert problems == [
        "host core-02: segment_ip = 10.1.100.12 is outside its segment core (10.1.200.0/24)",
        "host core-02: secret hsm_user_pin is not set (required by hsm for group core; "
        "put it in ansible-vault)",
    ]
    assert not any(secret in p for p in problems)


def test_a_controller_secret_is_reported_once_for_the_site(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(build_inventory({}), sort_keys=False))
    required = [{"var": "pki_ca_passphrase", "group": "all", "role": "pki", "controller": True}]
    assert problems_for(path, required) == [
        "secret pki_ca_passphrase is not set (required by pki on the controller; "
        "put it in ansible-vault)"
    ]
