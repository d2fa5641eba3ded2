"""The key ring the configuration asks for."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

from securecore.config import BackendError, Config, ConfigError
from securecore.keys.base import KeyBackend, KeyRing, KeyStoreError


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

        try:
            return SoftwareKeys(config.get("keys.software", "directory"))
        except KeyStoreError as error:
            raise BackendError(f"{config.path}: [keys.software] directory: {error}") from error
    softhsm_conf = config.get("keys.pkcs11", "softhsm_conf")
    if softhsm_conf:
        # SoftHSM reads this once, when the library is first loaded.
        os.environ["SOFTHSM2_CONF"] = softhsm_conf
    from securecore.keys.pkcs11 import Pkcs11Keys

    module, label = config.get("keys.pkcs11", "module"), config.get("keys.pkcs11", "token_label")
    try:
        return Pkcs11Keys(
            module, label, read_secret_file(config, "keys.pkcs11", "user_pin_file").decode()
        )
    except KeyStoreError as error:
        # Which key is wrong, from what the PKCS#11 library answered.
        cause = type(error.__cause__).__name__
        if cause == "NoSuchToken":
            where = f"token_label = {label!r}: no such token"
        elif cause.startswith("Pin"):
            where = f"user_pin_file: the PIN does not open token {label!r} ({cause})"
        elif isinstance(error.__cause__, (RuntimeError, OSError)):
            where = f"module = {module}: not a loadable PKCS#11 library"
        else:
            where = f"module = {module}, token_label = {label!r}: {error}"
        raise BackendError(f"{config.path}: [keys.pkcs11] {where}") from error


def open_key_ring(config: Config) -> KeyRing:
    return KeyRing(
        open_backend(config),
        config.get("keys", "signing_key"),
        config.get("keys", "kek"),
        datetime.timedelta(days=config.get("keys", "grace_period_days")),
    )
