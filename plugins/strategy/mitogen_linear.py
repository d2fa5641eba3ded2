"""The `linear` strategy run over Mitogen (ansible.cfg names it for every run).

Mitogen keeps one Python interpreter per host for the whole run and sends each
task to it, instead of copying a module and starting Python over SSH for every
task on every host; a second site.yml run on the lab goes from about 330 s to
about 110 s (bench/site_rerun.py). The package comes with the dev extra; its
strategy plugin lives in the installed package, whose path depends on the
virtualenv's Python, hence this re-export at a fixed path.

Mitogen also pins its processes to CPUs (ansible_mitogen.affinity), and every
process they start inherits the pin. On a machine with fewer than four CPUs its
policy puts the top-level process, each worker and each command a task runs on
the same one CPU: the lab's containers, started by a task (molecule's create,
`securecore-lab up`), ran every host on one core of two while the other idled,
and so did every command a local task runs. Here nothing is pinned: the
kernel's scheduler places Ansible's processes and what they start, as it does
without Mitogen.
"""

import ansible_mitogen.affinity
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

# The base policy assigns nothing; the module's policy is read at each use.
ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()

__all__ = ["StrategyModule"]
