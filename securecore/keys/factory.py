"""The key ring the configuration asks for."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

from securecore.config import Config, ConfigError
from securecore.keys.base import KeyBackend, KeyRing


def read_secret_file(config: Config, section: str, key: str) -> bytes:
    """A secret from a file that only its owner may read (never from the config itself)."""
    path = Path(config.get(section, key))
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{config.path}: [{section}] {key} = {path}: mode {stat.S_IMODE(mode):04o} lets "
            "others read a secret; chmod 0600 it"
        )
    return path.read_bytes().strip()


def open_backend(config: Config) -> KeyBackend:
    backend = config.get("keys", "backend")
    if backend == "software":
        from securecore.keys.software import SoftwareKeys

        return SoftwareKeys(config.get("keys.software", "directory"))
    softhsm_conf = config.get("keys.pkcs11", "softhsm_conf")
    if softhsm_conf:
        # SoftHSM reads this once, when the library is first loaded.
        os.environ["SOFTHSM2_CONF"] = softhsm_conf
    from securecore.keys.pkcs11 import Pkcs11Keys

    return Pkcs11Keys(
        config.get("keys.pkcs11", "module"),
        config.get("keys.pkcs11", "token_label"),
        read_secret_file(config, "keys.pkcs11", "user_pin_file").decode(),
    )


def open_key_ring(config: Config) -> KeyRing:
    return KeyRing(
        open_backend(config),
        config.get("keys", "signing_key"),
        config.get("keys", "kek"),
        datetime.timedelta(days=config.get("keys", "grace_period_days")),
    )
