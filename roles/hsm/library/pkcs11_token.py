#!/usr/bin/python
"""Ansible module: ensure a PKCS#11 token is initialised, never re-initialising it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pkcs11_token
short_description: Ensure a PKCS#11 token with a label exists and has a user PIN
description:
  - Looks for a token with the given label through the PKCS#11 module (python-pkcs11).
  - If none exists, initialises the first free slot's token with the label and SO PIN and
    sets the user PIN (C_InitToken and C_InitPIN), through the PKCS#11 API in this process:
    no PIN is ever on a command line, where any local user could read it in /proc.
  - An existing token is never re-initialised; the module only checks that the user PIN
    opens it.
options:
  module:
    description: Path of the PKCS#11 library (SoftHSM2 in the lab, the HSM vendor's client library in production).
    type: path
    required: true
  label:
    description: Token label (at most 32 characters).
    type: str
    required: true
  so_pin:
    description: Security officer PIN, used only to initialise a new token.
    type: str
    required: true
    no_log: true
  user_pin:
    description: User PIN of the token.
    type: str
    required: true
    no_log: true
requirements: [python-pkcs11]
notes:
  - Supports check mode.
author: SecureCore developers
"""

EXAMPLES = r"""
- name: Token for the core service
  pkcs11_token:
    module: /usr/lib/softhsm/libsofthsm2.so
    label: securecore
    so_pin: "{{ vault_hsm_so_pin }}"
    user_pin: "{{ vault_hsm_user_pin }}"
  environment:
    SOFTHSM2_CONF: /etc/securecore/softhsm2.conf
"""

RETURN = r"""
label:
  description: Label of the token.
  returned: always
  type: str
serial:
  description: Serial number of the token (empty when check mode would create it).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

try:
    import pkcs11

    # C_InitToken and C_InitPIN through the PKCS#11 API (securecore/keys/token_init.py).
    from ansible.module_utils.pkcs11_token_init import TokenInitError, initialise_token
    from pkcs11.exceptions import NoSuchToken, PinIncorrect

    HAS_PKCS11 = True
except ImportError:  # reported by the module
    HAS_PKCS11 = False


def find_token(lib, label):
    try:
        return lib.get_token(token_label=label)
    except NoSuchToken:
        return None


def main():
    module = AnsibleModule(
        argument_spec={
            "module": {"type": "path", "required": True},
            "label": {"type": "str", "required": True},
            "so_pin": {"type": "str", "required": True, "no_log": True},
            "user_pin": {"type": "str", "required": True, "no_log": True},
        },
        supports_check_mode=True,
    )
    if not HAS_PKCS11:
        module.fail_json(msg="python-pkcs11 is required on the host")
    params = module.params
    if len(params["label"]) > 32:
        module.fail_json(msg=f"label {params['label']!r} is longer than 32 characters")
    try:
        lib = pkcs11.lib(params["module"])
    except RuntimeError as exc:
        module.fail_json(msg=f"cannot load PKCS#11 module {params['module']}: {exc}")

    token = find_token(lib, params["label"])
    if token is not None:
        try:
            with token.open(user_pin=params["user_pin"]):
                pass
        except PinIncorrect:
            module.fail_json(msg=f"token {params['label']!r} exists but the user PIN is wrong")
        except pkcs11.exceptions.PKCS11Error as exc:
            module.fail_json(
                msg=f"token {params['label']!r} exists but cannot be opened with the user PIN "
                f"({type(exc).__name__}); it is never re-initialised: repair it by hand"
            )
        module.exit_json(changed=False, label=params["label"], serial=token.serial.decode().strip())

    if module.check_mode:
        module.exit_json(changed=True, label=params["label"], serial="")
    try:
        serial = initialise_token(
            params["module"], params["label"], params["so_pin"], params["user_pin"]
        )
    except TokenInitError as exc:
        module.fail_json(msg=f"cannot create token {params['label']!r}: {exc}")
    module.exit_json(changed=True, label=params["label"], serial=serial)


if __name__ == "__main__":
    main()
