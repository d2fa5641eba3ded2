"""Shared fixtures and paths for the test suite, and the markers that name what a test needs."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A test that uses one of these fixtures needs what the marker names; the marker is
# added here so that nobody has to remember it (`pytest -m "not softhsm"` on a machine
# without SoftHSM2). Tests that need it without such a fixture carry the mark themselves.
MARKER_OF_FIXTURE = {
    "softhsm": "softhsm",
    "hsm_setup": "softhsm",
    "postgres_dsn": "postgresql",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            marker = MARKER_OF_FIXTURE.get(fixture)
            if marker is not None:
                item.add_marker(marker)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT
