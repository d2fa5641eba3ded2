"""testinfra hosts for the lab, built from the lab inventory.

The hosts are reached over SSH exactly as Ansible reaches them: the lab key,
the known_hosts file that `securecore lab up` wrote (strict host key
checking), and sudo for root.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import testinfra

from securecore.lab.spec import LabHost, LabSpec, load_spec

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
SPEC: LabSpec = load_spec(PROJECT / "inventories" / "lab")


def connect(host: LabHost) -> testinfra.host.Host:
    return testinfra.get_host(
        f"ssh://{host.user}@127.0.0.1:{host.ssh_port}",
        ssh_identity_file=str(SPEC.ssh_key),
        ssh_extra_args=(
            f"-o UserKnownHostsFile={SPEC.known_hosts} -o StrictHostKeyChecking=yes "
            "-o IdentitiesOnly=yes -o BatchMode=yes"
        ),
        sudo=True,
    )


@pytest.fixture(params=SPEC.hosts, ids=[h.name for h in SPEC.hosts])
def lab_host(request: pytest.FixtureRequest) -> tuple[LabHost, testinfra.host.Host]:
    return request.param, connect(request.param)


@pytest.fixture(scope="session")
def spec() -> LabSpec:
    return SPEC
