"""The CPUs a process may run on, as the kernel lists them."""

from __future__ import annotations


def allowed_cpus(listed: str) -> set[int]:
    """The CPUs of a Cpus_allowed_list value ("0-1,4") of /proc/PID/status."""
    cpus: set[int] = set()
    for part in listed.strip().split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus
