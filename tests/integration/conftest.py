"""Fixtures shared by the integration tests."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from securecore.keys.software import SoftwareKeys
from tests.support.commands import needs
from tests.support.keyrings import software_ring
from tests.support.postgres import postgres_server
from tests.support.softhsm import SOFTHSM


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SoftHSM2 configuration of the test's own (its token directory under tmp_path,
    so tests running in parallel never share a token)."""
    needs("softhsm2-util", "pkcs11-tool")
    if not SOFTHSM.exists():
        pytest.skip("SoftHSM2 is not installed (scripts/bootstrap.sh installs it)")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    return conf


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    """An inventory of this machine alone, reached with the local connection."""
    path = tmp_path / "hosts.yml"
    path.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {
                        "here": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": sys.executable,
                        },
                    }
                }
            }
        )
    )
    return path


@pytest.fixture
def keys(tmp_path: Path) -> SoftwareKeys:
    """The file backend of a key ring with version 1 of the service's two keys."""
    return software_ring(tmp_path).backend


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """One private PostgreSQL server per test session (per worker under pytest-xdist):
    initdb and start cost seconds, so tests share the server and each takes its own
    database with tests.support.postgres.fresh_database."""
    with postgres_server() as dsn:
        yield dsn
