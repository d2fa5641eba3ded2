"""Tools for the people who work on SecureCore, not part of the service on core hosts.

- the lab: podman containers on this machine that stand in for real hosts,
  described by an ordinary Ansible inventory (``inventories/lab``), so the
  playbooks reach them over SSH exactly as they would reach real machines
  (``securecore-lab up|down|status``);
- the development setup: a configuration, keys, a CA and a database in one
  directory, without Ansible (``securecore-lab init DIR``).

Installed with the development tools (scripts/bootstrap.sh, tools/lab), never
in the product wheel.
"""

from securecore_lab.errors import LabError

__all__ = ["LabError"]
