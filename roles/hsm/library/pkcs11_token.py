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
    sets the user PIN (C_InitToken and C_InitPIN, through pkcs11-tool, which works with any
    PKCS#11 module).
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
requirements: [python-pkcs11, pkcs11-tool (opensc)]
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

import shutil
import subprocess

from ansible.module_utils.basic import AnsibleModule

try:
    import pkcs11
    from pkcs11.exceptions import NoSuchToken, PinIncorrect

    HAS_PKCS11 = True
except ImportError:  # reported by the module
    HAS_PKCS11 = False


def find_token(lib, label):
    try:
        return lib.get_token(token_label=label)
    except NoSuchToken:
        return None


def free_slot(lib):
    """The first slot whose token is not initialised."""
    for slot in lib.get_slots(token_present=True):
        token = slot.get_token()
        if not token.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED:
            return slot
    return None


def run_tool(module, args):
    tool = shutil.which("pkcs11-tool")
    if tool is None:
        module.fail_json(msg="pkcs11-tool is not installed (Debian package opensc)")
    proc = subprocess.run(
        [tool, "--module", module.params["module"], *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        # The PINs are passed as arguments, never echoed back in the message.
        module.fail_json(msg=f"pkcs11-tool {args[0]} failed: {proc.stderr.strip()}")


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
    slot = free_slot(lib)
    if slot is None:
        module.fail_json(msg=f"no token labelled {params['label']!r} and no free slot to create it")
    run_tool(
        module,
        [
            "--init-token",
            "--slot",
            str(slot.slot_id),
            "--label",
            params["label"],
            "--so-pin",
            params["so_pin"],
        ],
    )
    # The PKCS#11 library of this process keeps the slot list it read at
    # start, so the new token is addressed by label through the tool.
    run_tool(
        module,
        [
            "--init-pin",
            "--token-label",
            params["label"],
            "--login",
            "--so-pin",
            params["so_pin"],
            "--new-pin",
            params["user_pin"],
        ],
    )
    module.exit_json(changed=True, label=params["label"], serial="")


if __name__ == "__main__":
    main()
