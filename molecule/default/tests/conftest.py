"""testinfra hosts for the lab, built from the lab inventory (tests/labhosts.py)."""

from __future__ import annotations

import pytest

from tests.support.labhosts import connect, lab_spec

SPEC = lab_spec()


@pytest.fixture(params=SPEC.hosts, ids=[h.name for h in SPEC.hosts])
def lab_host(request: pytest.FixtureRequest):
    return request.param, connect(SPEC, request.param)


@pytest.fixture(scope="session")
def spec():
    return SPEC
