#!/usr/bin/python
"""Ansible module: versioned, non-extractable keys on a PKCS#11 token."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pkcs11_key
short_description: Ensure a versioned key exists on a PKCS#11 token, sensitive and non-extractable
description:
  - Keys are named C(NAME-vN). Each object carries that label and an id derived from it.
  - C(version=latest) makes sure at least one version exists (creating C(NAME-v1) if none)
    and reports the newest; it changes nothing when a version exists.
  - C(version=next) creates the next version (rotation). Earlier versions stay on the token,
    usable for verification and decryption, until retired with C(state=absent) and a number.
  - Private and secret keys are created with CKA_SENSITIVE true and CKA_EXTRACTABLE false,
    so their values never leave the token. Only public keys are returned.
options:
  module:
    description: Path of the PKCS#11 library.
    type: path
    required: true
  token_label:
    description: Label of the token.
    type: str
    required: true
  user_pin:
    description: User PIN of the token.
    type: str
    required: true
    no_log: true
  name:
    description: Base label of the key; versions are labelled C(NAME-vN).
    type: str
    required: true
  type:
    description: C(ec_p256) is an ECDSA P-256 signing key pair; C(aes256) an AES-256 key-encryption key.
    type: str
    required: true
    choices: [ec_p256, aes256]
  version:
    description: C(latest), C(next), or a version number (with state=absent, the one to retire).
    type: str
    default: latest
  state:
    description: C(present) or C(absent) (absent needs a version number).
    type: str
    default: present
    choices: [present, absent]
requirements: [python-pkcs11]
notes:
  - Supports check mode.
author: SecureCore developers
"""

EXAMPLES = r"""
- name: Signing key of the core service
  pkcs11_key:
    module: /usr/lib/softhsm/libsofthsm2.so
    token_label: securecore
    user_pin: "{{ vault_hsm_user_pin }}"
    name: securecore-signing
    type: ec_p256
  register: signing_key

- name: Rotate the key-encryption key
  pkcs11_key:
    module: /usr/lib/softhsm/libsofthsm2.so
    token_label: securecore
    user_pin: "{{ vault_hsm_user_pin }}"
    name: securecore-kek
    type: aes256
    version: next
"""

RETURN = r"""
label:
  description: Label of the reported version.
  returned: when state=present
  type: str
  sample: securecore-signing-v2
version:
  description: Number of the reported version.
  returned: when state=present
  type: int
versions:
  description: Every version on the token after the run, oldest first.
  returned: always
  type: list
  elements: int
id:
  description: CKA_ID of the reported version, hex.
  returned: when state=present
  type: str
public_key_pem:
  description: Public key (PEM, SubjectPublicKeyInfo) of an ec_p256 key; empty for aes256.
  returned: when state=present
  type: str
"""

import datetime
import hashlib
import re

from ansible.module_utils.basic import AnsibleModule

try:
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass
    from pkcs11.exceptions import NoSuchToken, PinIncorrect
    from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

    HAS_PKCS11 = True
except ImportError:
    HAS_PKCS11 = False

P256_OID = "1.2.840.10045.3.1.7"  # secp256r1 / prime256v1


def label_of(name, version):
    return f"{name}-v{version}"


CREATED_APPLICATION = "securecore/key-created"


def id_of(label):
    # A stable id from the label, so a key pair's halves share it.
    return hashlib.sha256(label.encode()).digest()[:8]


def versions_on_token(session, name, key_class):
    pattern = re.compile(rf"^{re.escape(name)}-v(\d+)$")
    found = set()
    for obj in session.get_objects({Attribute.CLASS: key_class}):
        match = pattern.match(obj[Attribute.LABEL])
        if match:
            found.add(int(match.group(1)))
    return sorted(found)


def public_pem(session, label):
    from cryptography.hazmat.primitives import serialization

    key = session.get_key(object_class=ObjectClass.PUBLIC_KEY, key_type=KeyType.EC, label=label)
    der = encode_ec_public_key(key)
    loaded = serialization.load_der_public_key(der)
    return loaded.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def record_creation(session, label):
    # When the version was made, as a data object next to the key: the service
    # keeps an older version usable for a grace period counted from its
    # successor's creation. (SoftHSM 2.6 cannot read back CKA_START_DATE.)
    session.create_object(
        {
            Attribute.CLASS: ObjectClass.DATA,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.LABEL: label,
            Attribute.APPLICATION: CREATED_APPLICATION,
            Attribute.VALUE: datetime.datetime.now(datetime.UTC)
            .isoformat(timespec="seconds")
            .encode(),
        }
    )


def create(session, key_type, label):
    common = {Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: id_of(label)}
    private = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.PRIVATE: True}
    if key_type == "aes256":
        session.generate_key(
            KeyType.AES,
            256,
            store=True,
            label=label,
            id=id_of(label),
            template={
                **common,
                **private,
                Attribute.WRAP: True,
                Attribute.UNWRAP: True,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
            },
        )
    else:
        params = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters(P256_OID)},
            local=True,
        )
        params.generate_keypair(
            store=True,
            label=label,
            id=id_of(label),
            public_template={**common, Attribute.VERIFY: True},
            private_template={**common, **private, Attribute.SIGN: True},
        )
    record_creation(session, label)


def check_protected(module, session, key_class, label):
    obj = next(iter(session.get_objects({Attribute.CLASS: key_class, Attribute.LABEL: label})))
    if not obj[Attribute.SENSITIVE] or obj[Attribute.EXTRACTABLE]:
        module.fail_json(
            msg=f"key {label} exists but is not sensitive and non-extractable; "
            "it cannot be trusted and must be replaced by a new version"
        )


def main():
    module = AnsibleModule(
        argument_spec={
            "module": {"type": "path", "required": True},
            "token_label": {"type": "str", "required": True},
            "user_pin": {"type": "str", "required": True, "no_log": True},
            "name": {"type": "str", "required": True},
            "type": {"type": "str", "required": True, "choices": ["ec_p256", "aes256"]},
            "version": {"type": "str", "default": "latest"},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        },
        supports_check_mode=True,
    )
    if not HAS_PKCS11:
        module.fail_json(msg="python-pkcs11 is required on the host")
    p = module.params
    if not re.match(r"^[A-Za-z0-9_.-]{1,48}$", p["name"]):
        module.fail_json(msg=f"name {p['name']!r}: use 1-48 of A-Z a-z 0-9 _ . -")
    if p["version"] not in ("latest", "next") and not p["version"].isdigit():
        module.fail_json(msg=f"version {p['version']!r}: use latest, next or a number")
    if p["state"] == "absent" and not p["version"].isdigit():
        module.fail_json(msg="state=absent needs the version number to retire")

    try:
        token = pkcs11.lib(p["module"]).get_token(token_label=p["token_label"])
    except NoSuchToken:
        module.fail_json(msg=f"no token labelled {p['token_label']!r}")
    except RuntimeError as exc:
        module.fail_json(msg=f"cannot load PKCS#11 module {p['module']}: {exc}")
    key_class = ObjectClass.SECRET_KEY if p["type"] == "aes256" else ObjectClass.PRIVATE_KEY

    try:
        session = token.open(user_pin=p["user_pin"], rw=True)
    except PinIncorrect:
        module.fail_json(msg=f"the user PIN of token {p['token_label']!r} is wrong")
    with session:
        versions = versions_on_token(session, p["name"], key_class)
        changed = False
        if p["state"] == "absent":
            number = int(p["version"])
            if number in versions:
                changed = True
                if not module.check_mode:
                    label = label_of(p["name"], number)
                    for obj in list(session.get_objects({Attribute.LABEL: label})):
                        obj.destroy()
                versions.remove(number)
            module.exit_json(changed=changed, versions=versions)

        if p["version"] == "next" or not versions:
            target = (max(versions) if versions else 0) + 1
        elif p["version"] == "latest":
            target = max(versions)
        else:
            target = int(p["version"])
        label = label_of(p["name"], target)
        if target not in versions:
            changed = True
            if module.check_mode:
                module.exit_json(
                    changed=True,
                    label=label,
                    version=target,
                    versions=[*versions, target],
                    id=id_of(label).hex(),
                    public_key_pem="",
                )
            create(session, p["type"], label)
            versions.append(target)
        check_protected(module, session, key_class, label)
        pem = public_pem(session, label) if p["type"] == "ec_p256" else ""
        module.exit_json(
            changed=changed,
            label=label,
            version=target,
            versions=sorted(versions),
            id=id_of(label).hex(),
            public_key_pem=pem,
        )


if __name__ == "__main__":
    main()
