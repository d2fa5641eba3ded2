"""The lab: podman containers on this machine that stand in for real hosts.

The lab is described by an ordinary Ansible inventory (``inventories/lab``);
this package reads that inventory and makes the hosts it names exist, so the
playbooks reach them over SSH exactly as they would reach real machines.
"""

from securecore.lab.errors import LabError

__all__ = ["LabError"]
