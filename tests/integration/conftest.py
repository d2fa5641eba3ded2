"""Fixtures shared by the integration tests."""

from __future__ import annotations

import subprocess
import sys
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


def make_token(label: str, so_pin: str, user_pin: str) -> None:
    """A new token on the test's SoftHSM2 (SOFTHSM2_CONF), made through the PKCS#11 API
    in a fresh process (SoftHSM reads its configuration once per process); the PINs
    go in on stdin, never on a command line."""
    program = (
        "import sys\n"
        "from securecore.keys.token_init import initialise_token\n"
        "so_pin, user_pin = sys.stdin.read().split()\n"
        f"initialise_token({str(SOFTHSM)!r}, {label!r}, so_pin, user_pin)\n"
    )
    subprocess.run([sys.executable, "-c", program], input=f"{so_pin}\n{user_pin}\n",
                   text=True, check=True, capture_output=True, timeout=60)  # fmt: skip
