"""Keys of the core service behind one interface, with two backends.

- `pkcs11`: keys on an HSM token (SoftHSM2 in the lab), made by roles/hsm;
  private and secret values never leave the token.
- `software`: keys in files, for development and tests.

Keys are versioned: NAME-vN (the key id carried by everything signed or
encrypted). The newest version signs and wraps; every version still present
verifies and unwraps, until it is retired (removed) after its grace period.
"""

from securecore.keys.base import (
    KeyBackend,
    KeyRing,
    KeyStoreError,
    key_id,
    parse_key_id,
    signing_public_keys,
)

__all__ = [
    "KeyBackend",
    "KeyRing",
    "KeyStoreError",
    "key_id",
    "parse_key_id",
    "signing_public_keys",
]
