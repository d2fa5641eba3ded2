"""The converged lab hosts are the Debian 12 servers the inventory describes."""

from __future__ import annotations

import ipaddress
import os

from tests.support.cpus import allowed_cpus
from tests.support.labhosts import connect


def test_debian_12_with_systemd_running(lab_host):
    _, host = lab_host
    assert host.system_info.distribution == "debian"
    assert host.system_info.release.startswith("12")
    state = host.run("systemctl is-system-running").stdout.strip()
    # "degraded" would mean a unit failed on the host; nothing may fail here.
    assert state == "running", host.run("systemctl --failed --no-legend").stdout


def test_hostname_is_the_inventory_name(lab_host):
    lab, host = lab_host
    assert host.run("hostname").stdout.strip() == lab.name


def test_address_on_its_segment(lab_host, spec):
    lab, host = lab_host
    addresses = host.interface.default().addresses
    assert str(lab.address) in addresses
    segment = spec.segments[lab.segment]
    assert ipaddress.IPv4Address(str(lab.address)) in segment.network


def test_sshd_listens_and_admin_has_sudo(lab_host):
    _, host = lab_host
    assert host.service("ssh").is_running
    assert host.socket("tcp://0.0.0.0:22").is_listening
    assert host.run("id -u").stdout.strip() == "0"  # through sudo, as Ansible becomes root


def test_each_host_has_its_own_ssh_host_key(spec):
    fingerprints = {
        connect(spec, h).run("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]
        for h in spec.hosts
    }
    assert len(fingerprints) == len(spec.hosts)


def test_every_process_of_a_host_may_run_on_every_cpu(lab_host):
    # A lab host is made by a task (molecule's create runs securecore-lab up) and
    # inherits the CPUs that task's process may use: pinned by Ansible's strategy, the
    # whole lab shared one CPU of the machine (plugins/strategy/mitogen_linear.py).
    _, host = lab_host
    listed = host.run("grep -h Cpus_allowed_list /proc/1/status /proc/self/status").stdout
    found = [allowed_cpus(line.split()[-1]) for line in listed.splitlines()]
    assert found == [os.sched_getaffinity(0)] * 2, listed
