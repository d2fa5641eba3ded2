"""Fixtures shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.helpers import needs

SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    needs("softhsm2-util", "pkcs11-tool")
    if not SOFTHSM.exists():
        pytest.skip("SoftHSM2 is not installed (scripts/bootstrap.sh installs it)")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    return conf
