"""The project's Ansible strategy (plugins/strategy/mitogen_linear.py): tasks run over
Mitogen, and what a task starts may run on every CPU the machine offers. Mitogen's own
CPU policy pins Ansible's processes, and so everything they start (a command, the lab's
containers), to one CPU on machines of two or three."""

from __future__ import annotations

import os
import sys

import pytest

from tests.support.commands import run
from tests.support.cpus import allowed_cpus


def test_what_a_task_starts_may_run_on_every_cpu(tmp_path) -> None:
    offered = os.sched_getaffinity(0)
    if len(offered) < 2:
        pytest.skip("a single CPU: there is nothing to pin to")
    strategy = run("ansible-config", "dump", "--only-changed")
    assert "DEFAULT_STRATEGY(" in strategy.stdout and "mitogen_linear" in strategy.stdout
    playbook = tmp_path / "cpus.yml"
    playbook.write_text(
        "- hosts: localhost\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - name: The CPUs a command of a task may run on\n"
        "      ansible.builtin.command: grep Cpus_allowed_list /proc/self/status\n"
        "      register: allowed\n"
        "      changed_when: false\n"
        "    - name: Say them\n"
        "      ansible.builtin.debug:\n"
        '        msg: "allowed={{ allowed.stdout.split()[-1] }}"\n'
    )
    interpreter = f"ansible_python_interpreter={sys.executable}"
    proc = run(
        "ansible-playbook", "-i", "localhost,", "-c", "local", "-e", interpreter, str(playbook)
    )
    [line] = [line for line in proc.stdout.splitlines() if "msg: allowed=" in line]
    assert allowed_cpus(line.split("allowed=")[1].strip()) == offered, proc.stdout
