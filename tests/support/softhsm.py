"""SoftHSM2 tokens for tests (the softhsm fixture in tests/integration/conftest.py gives
each test its own token directory)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")


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
    subprocess.run(
        [sys.executable, "-c", program],
        input=f"{so_pin}\n{user_pin}\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    )
