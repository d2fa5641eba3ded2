"""The lab manager against real podman: up, idempotence, repair, down.

They run last in the lab's verify (tests/conftest.py orders them), on the lab that
molecule's create made and site.yml converged, so the lab is built once per run:
`lab up` finds it complete, the repair tests stop and replace containers (a replaced
one comes back from the image, bare), and the last test removes the lab (molecule's
destroy then finds nothing to do).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from securecore_lab.spec import load_spec
from tests.support.commands import ROOT, needs, run
from tests.support.labhosts import ssh_audit_failures

pytestmark = pytest.mark.lab
SPEC = load_spec(ROOT / "inventories" / "lab")
LABEL = f"label={SPEC.label}"


def podman_names(*args: str) -> list[str]:
    out = subprocess.run(["podman", *args], capture_output=True, text=True, check=True).stdout
    return [line for line in out.split() if line]


def inspect_container(host: str) -> dict:
    out = subprocess.run(
        ["podman", "container", "inspect", SPEC.container_name(host)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)[0]


@pytest.fixture(scope="module")
def lab_up():
    needs("podman", "debootstrap", "ssh")
    first = run("securecore-lab", "up")
    yield first
    run("securecore-lab", "down")


def test_up_builds_every_host(lab_up) -> None:
    # molecule's create built the lab: here `lab up` finds every host in place.
    assert "lab up: changed=" in lab_up.stdout
    running = podman_names("ps", "--filter", LABEL, "--format", "{{.Names}}")
    assert sorted(running) == sorted(SPEC.container_name(h.name) for h in SPEC.hosts)
    networks = podman_names("network", "ls", "--filter", LABEL, "--format", "{{.Name}}")
    assert sorted(networks) == sorted(SPEC.network_name(s) for s in SPEC.segments)


def test_second_up_changes_nothing(lab_up) -> None:
    proc = run("securecore-lab", "up")
    assert "lab up: changed=0" in proc.stdout
    assert "changed:" not in proc.stdout


def test_ansible_reaches_every_host_over_ssh(lab_up) -> None:
    proc = run("ansible", "-i", "inventories/lab", "all", "-m", "ping", "-o")
    for host in SPEC.hosts:
        assert f"{host.name} | SUCCESS" in proc.stdout


def test_ssh_is_published_on_loopback_only(lab_up) -> None:
    for host in SPEC.hosts:
        info = inspect_container(host.name)
        bindings = info["NetworkSettings"]["Ports"]["22/tcp"]
        assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(host.ssh_port)}]


def test_hosts_sit_on_their_segment_networks(lab_up) -> None:
    for host in SPEC.hosts:
        info = inspect_container(host.name)
        networks = info["NetworkSettings"]["Networks"]
        assert list(networks) == [SPEC.network_name(host.segment)]
        assert networks[SPEC.network_name(host.segment)]["IPAddress"] == str(host.address)


def test_up_repairs_stopped_and_half_made_containers(lab_up) -> None:
    stopped, foreign = SPEC.hosts[0], SPEC.hosts[1]
    subprocess.run(["podman", "stop", "--time", "2", SPEC.container_name(stopped.name)], check=True)
    # A container left half-made by an interrupted run: right name, no lab labels.
    subprocess.run(["podman", "rm", "--force", SPEC.container_name(foreign.name)], check=True)
    subprocess.run(
        [
            "podman",
            "--runtime",
            "runc",
            "create",
            "--name",
            SPEC.container_name(foreign.name),
            SPEC.image,
            "/bin/true",
        ],
        check=True,
        capture_output=True,
    )
    proc = run("securecore-lab", "up")
    assert f"started stopped container {SPEC.container_name(stopped.name)}" in proc.stdout
    assert f"removed container {SPEC.container_name(foreign.name)}" in proc.stdout
    ping = run("ansible", "-i", "inventories/lab", "all", "-m", "ping", "-o")
    assert ping.stdout.count("| SUCCESS") == len(SPEC.hosts)
    assert "lab up: changed=0" in run("securecore-lab", "up").stdout


def test_up_replaces_a_running_container_that_does_not_answer(lab_up) -> None:
    # What an interrupted session can leave: podman says running, SSH is dead.
    silent = SPEC.hosts[2]
    name = SPEC.container_name(silent.name)
    subprocess.run(
        ["podman", "exec", name, "systemctl", "stop", "ssh.socket", "ssh.service"],
        check=True,
        capture_output=True,
    )
    proc = run("securecore-lab", "up")
    assert f"removed container of {silent.name}: it did not answer over SSH" in proc.stdout
    ping = run("ansible", "-i", "inventories/lab", silent.name, "-m", "ping", "-o")
    assert f"{silent.name} | SUCCESS" in ping.stdout


def test_bare_host_fails_an_independent_ssh_audit(lab_up) -> None:
    # The same audit finds no failure once roles/hardening has run
    # (tests/hardening/test_hardening.py): the lab's bare hosts are the baseline it
    # improves. The host that test_up_repairs_stopped_and_half_made_containers had
    # `lab up` make again from the image is bare; the others are converged.
    needs("ssh-audit")
    failures, report = ssh_audit_failures(SPEC.hosts[1])
    assert failures, report
    assert any("nistp256" in line or "sha1" in line for line in failures)


def test_status_reports_every_host_reachable(lab_up) -> None:
    proc = run("securecore-lab", "status")
    for host in SPEC.hosts:
        line = next(row for row in proc.stdout.splitlines() if row.startswith(host.name + " "))
        assert "running" in line and line.rstrip().endswith("yes")


def test_down_removes_everything_it_made(lab_up) -> None:
    proc = run("securecore-lab", "down")
    assert "changed=0" not in proc.stdout
    assert podman_names("ps", "--all", "--filter", LABEL, "--format", "{{.Names}}") == []
    assert podman_names("network", "ls", "--filter", LABEL, "--format", "{{.Name}}") == []
    assert not SPEC.state_dir.exists()
    assert "lab down: changed=0" in run("securecore-lab", "down").stdout
    status = run("securecore-lab", "status", check=False)
    assert status.returncode == 3
