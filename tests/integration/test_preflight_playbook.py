"""playbooks/preflight.yml as an operator runs it: on the controller only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from securecore_lab.manager import LAB_SECRETS
from tests.support.commands import ROOT, run

INVALID_PLUGIN_NETWORK_SEGMENTS = {
    "dmz": {"vlan": 100, "cidr": "10.1.100.0/24"},
    "core": {"vlan": 200, "cidr": "10.1.200.0/24"},
    "plugin": {"vlan": 300, "cidr": "10.1.300.0/24"},
    "dr_core": {"vlan": 210, "cidr": "10.2.200.0/24"},
    "management": {"vlan": 250, "cidr": "10.1.250.0/24"},
}


@pytest.fixture
def production_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "production"
    shutil.copytree(ROOT / "inventories" / "production", copy)
    return copy


def test_lab_inventory_passes_once_the_lab_made_its_secrets(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    shutil.copytree(ROOT / "inventories" / "lab", lab, ignore=shutil.ignore_patterns(".state"))
    missing = run("ansible-playbook", "-i", str(lab), "playbooks/preflight.yml", check=False)
    assert missing.returncode != 0
    assert "host core-01: secret hsm_user_pin is not set (required by hsm" in missing.stdout
    secrets = lab / ".state" / "secrets"
    secrets.mkdir(parents=True)
    for name in LAB_SECRETS:
        (secrets / name).write_text("0123456789abcdef0123")
    proc = run("ansible-playbook", "-i", str(lab), "playbooks/preflight.yml")
    assert "Inventory OK" in proc.stdout and "0123456789abcdef" not in proc.stdout


def test_production_example_asks_for_its_vault_secrets_only() -> None:
    proc = run(
        "ansible-playbook", "-i", "inventories/production", "playbooks/preflight.yml", check=False
    )
    assert proc.returncode != 0
    assert "Preflight found 7 problem(s)" in proc.stdout
    for host in ("core-01", "core-02"):
        for var in ("hsm_so_pin", "hsm_user_pin"):
            assert f"host {host}: secret {var} is not set (required by hsm" in proc.stdout
    for host in ("mgmt-01", "core-03"):  # each repository's own
        assert (
            f"host {host}: secret postgresql_backup_passphrase is not set (required by"
            " postgresql_backup" in proc.stdout
        )
    assert "secret pki_ca_passphrase is not set (required by pki on the controller" in proc.stdout


def test_production_example_with_secrets_passes(production_copy: Path) -> None:
    (production_copy / "host_vars").mkdir()
    for host in ("core-01", "core-02"):
        (production_copy / "host_vars" / f"{host}.yml").write_text(
            "hsm_so_pin: example-so-pin\nhsm_user_pin: example-user-pin\n"
        )
    for host in ("mgmt-01", "core-03"):
        (production_copy / "host_vars" / f"{host}.yml").write_text(
            f"postgresql_backup_passphrase: example-backup-passphrase-{host}\n"
        )
    vault = production_copy / "group_vars" / "all" / "vault.yml"
    vault.write_text("pki_ca_passphrase: example-ca-passphrase\n")
    proc = run("ansible-playbook", "-i", str(production_copy), "playbooks/preflight.yml")
    assert "Inventory OK: 10 hosts in 5 segments" in proc.stdout


def test_an_invalid_plugin_network_is_rejected_without_touching_a_host(
    production_copy: Path,
) -> None:
    site = production_copy / "group_vars" / "all" / "site.yml"
    site.write_text(site.read_text().replace("10.1.30.0/24", "10.1.300.0/24"))
    proc = run("ansible-playbook", "-i", str(production_copy), "playbooks/site.yml", check=False)
    assert proc.returncode != 0
    assert "site_segments.plugin.cidr = '10.1.300.0/24': is not a valid IPv4 network" in proc.stdout
    # Only the controller ran anything: no play reached a production host.
    recap = proc.stdout.split("PLAY RECAP", 1)[1]
    recap_hosts = [line.split()[0] for line in recap.splitlines() if " ok=" in line]
    assert recap_hosts == ["localhost"]
    assert "UNREACHABLE" not in proc.stdout
    assert proc.stdout.count("PLAY [") == 1


def test_every_problem_is_listed_in_one_message(production_copy: Path) -> None:
    segments = dict(INVALID_PLUGIN_NETWORK_SEGMENTS, core={"vlan": 5000, "cidr": "10.1.200.0/24"})
    proc = run(
        "ansible-playbook",
        "-i",
        str(production_copy),
        "playbooks/preflight.yml",
        "-e",
        json.dumps({"site_segments": segments}),
        check=False,
    )
    assert proc.returncode != 0
    # Two in the segments, seven for the vault secrets the example leaves to the user.
    assert "Preflight found 9 problem(s)" in proc.stdout
    assert "site_segments.core.vlan = 5000: outside 1-4094" in proc.stdout
    assert "site_segments.plugin.cidr = '10.1.300.0/24'" in proc.stdout


MEMBERS = ("core-01", "core-02", "mgmt-01")


def test_a_database_consensus_of_two_nodes_is_refused(production_copy: Path) -> None:
    vault = production_copy / "group_vars" / "all" / "vault.yml"
    vault.write_text("pki_ca_passphrase: example-ca-passphrase\n")
    hosts = production_copy / "hosts.yml"
    text = hosts.read_text()
    three = "\n".join(
        ["    database_consensus:", "      hosts:", *(f"        {h}:" for h in MEMBERS)]
    )
    assert three in text
    hosts.write_text(text.replace(three, three.removesuffix("\n        mgmt-01:")))
    proc = run("ansible-playbook", "-i", str(production_copy), "playbooks/site.yml", check=False)
    assert proc.returncode != 0
    assert (
        "group database_consensus: 2 hosts (core-01, core-02); the consensus store needs an odd"
        " number, at least 3" in " ".join(proc.stdout.split())
    )
    assert proc.stdout.count("PLAY [") == 1  # refused before any host was touched
