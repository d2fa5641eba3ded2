"""A key ring on the file backend, with version 1 of the service's two keys (for tests)."""

from __future__ import annotations

from pathlib import Path

from securecore.keys.base import KeyRing
from securecore.keys.software import SoftwareKeys


def software_ring(base: Path) -> KeyRing:
    directory = base / "keys"
    directory.mkdir(mode=0o700)
    backend = SoftwareKeys(directory)
    backend.create_version("securecore-signing", "ec_p256")
    backend.create_version("securecore-kek", "aes256")
    return KeyRing(backend, "securecore-signing", "securecore-kek")
