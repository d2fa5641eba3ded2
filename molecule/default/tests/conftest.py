"""The lab checks after one site.yml converge: testinfra hosts built from the lab inventory
(tests/support/labhosts.py), every check marked `lab`, and the order they run in.

The lab is built once per run and every check runs against it, so the order matters:
checks that only read the hosts come first, then those that change a host and restore
it, then those that leave it changed (revocation, shutdown, rotation, upgrades), and the
lab manager's own tests, which stop, replace and finally remove the containers, last.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import background
from tests.support.commands import ROOT
from tests.support.labhosts import connect, lab_spec

SPEC = lab_spec()
HERE = Path(__file__).resolve().parent

# Module paths (relative to this directory) in the order they run; within a module the
# tests keep the order they are written in. A module missing here runs after the listed
# read-only ones and before the ones that change the hosts, so a new read-only check
# needs no entry; one that changes a host must be placed here.
ORDER = [
    # Read the hosts only. A test here may write only what site.yml does not manage,
    # and removes it in a finally: the site runs of whole_site/test_site_runs.py go on
    # beside these checks, and would see (and a real run would undo) anything else.
    "test_lab_hosts.py",
    "hardening/test_hardening.py",
    "hardening/test_compliance_before_after.py",
    "hsm/test_hsm.py",  # before the key rotation in whole_site/test_core_service.py
    "network_segments/test_zones.py",
    "whole_site/test_compliance.py",
    None,  # every module not listed
    # Their work (tests/support/background.py) starts with the session and runs beside
    # the checks above, reading the hosts only: Lynis unpacked in a temporary directory
    # (REQ-HARD-17), site.yml run again and in check mode (REQ-OPS-2). Their tests wait
    # for it here, before anything below changes a host.
    "hardening/test_lynis.py",
    "whole_site/test_site_runs.py",
    # Scheduled runs write new evidence and series heads, which site.yml copies to the
    # controller: after the site runs above. Tampering with the series is put back.
    "whole_site/test_compliance_schedule.py",
    # Stops the core service on both core hosts, rewrites the audit log behind it and
    # puts it back.
    "whole_site/test_audit_witness.py",
    # Change the hosts: the PKI's refusals (the core service stopped on core-01 for the
    # length of each TLS exchange, started again after) and a revoked client certificate.
    "pki/test_pki.py",
    # The DMZ edge: kills core-01's service under load through it, starts it again.
    "edge/test_edge.py",
    # Monitoring: reads the targets, then stops core-02's service until its page resolves.
    "monitoring/test_monitoring.py",
    # Central logs: cuts plugin-01's link to the collector (an nft table of its own,
    # removed in finally:) and writes markers to every host's journal.
    "central_logs/test_central_logs.py",
    # Incident response: contains plugin-01 under traffic, releases it as it was.
    "incident/test_containment.py",
    # Shutdown and recovery, key and certificate rotation, backup and restore, upgrades.
    "whole_site/test_core_service.py",
    "whole_site/test_revocation.py",
    # Kills, cuts off and switches over the database nodes; leaves the cluster healthy.
    "database/test_database_failover.py",
    # Backups after the failovers: the repository has followed every new primary.
    "database/test_database_backup.py",
    # The cold site restored from those backups (a drill: it leaves the primary as it was).
    "database/test_dr_drill.py",
    # Stops, replaces and removes the lab's containers: always last.
    "lab_manager/test_lab_manager.py",
]


def _rank(item: pytest.Item) -> int:
    relative = Path(str(item.fspath)).resolve().relative_to(HERE).as_posix()
    return ORDER.index(relative) if relative in ORDER else ORDER.index(None)


@pytest.hookimpl(trylast=True)  # after pytest's own grouping by fixture parameters
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = [path for path in ORDER if path is not None and not (HERE / path).is_file()]
    if missing:  # a renamed module would otherwise lose its place silently
        raise pytest.UsageError(f"ORDER in {__file__} names missing modules: {missing}")
    for item in items:
        item.add_marker(pytest.mark.lab)
    items.sort(key=_rank)  # stable: a module's tests keep their order


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the background work of every selected module that has some."""
    modules = {item.module for item in session.items if isinstance(item, pytest.Function)}
    for module in sorted(modules, key=lambda m: m.__name__):
        work = getattr(module, "BACKGROUND", None)
        if work is not None:
            background.start(module.__name__, work)


@pytest.fixture(params=SPEC.hosts, ids=[h.name for h in SPEC.hosts])
def lab_host(request: pytest.FixtureRequest):
    return request.param, connect(SPEC, request.param)


@pytest.fixture(scope="session")
def spec():
    return SPEC


@pytest.fixture(scope="module")
def hosts():
    """Every lab host by name, as testinfra reaches it (root through sudo)."""
    return {h.name: connect(SPEC, h) for h in SPEC.hosts}


def configuration_state(host) -> str:
    """Every configuration and installed file with its time of change (the service's own
    data changes all the time, and is not looked at)."""
    return host.check_output(
        "find /etc /opt /usr/local -xdev -type f -printf '%p %T@\\n' 2>/dev/null | sort | md5sum"
    )


@pytest.fixture(scope="session")
def site_check(hosts_by_name):
    """`compliance check` over the converged lab, every check, once for the session: the
    JSON document, and each host's configuration state before and after it (a gathering
    pass over six hosts takes a minute; the hardening and the site's checks both read it)."""
    before = {name: configuration_state(host) for name, host in hosts_by_name.items()}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "compliance.cli",
            "check",
            "-i",
            str(ROOT / "inventories" / "lab"),
            "--format",
            "json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    after = {name: configuration_state(host) for name, host in hosts_by_name.items()}
    return json.loads(proc.stdout), before, after


@pytest.fixture(scope="session")
def hosts_by_name():
    return {h.name: connect(SPEC, h) for h in SPEC.hosts}
