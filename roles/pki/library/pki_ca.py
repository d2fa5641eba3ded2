#!/usr/bin/python
"""Ansible module: the site's root and intermediate CA and its CRL, on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pki_ca
short_description: Keep a root CA, an intermediate CA and a CRL in a directory on the controller
description:
  - Creates the root CA (ECDSA P-256, SHA-256, self-signed) and an intermediate CA that it
    signs (path length 0), the intermediate's CRL, and nothing else when they are fine.
  - Both CA keys are stored as PKCS#8 encrypted with PBES2 (PBKDF2-HMAC-SHA256 with
    O(kdf_iterations) iterations, AES-256-CBC), readable by OpenSSL and cryptography.
  - The intermediate is re-issued when fewer than O(intermediate_renew_before_days) days are
    left or when it was not signed by the current root. The root is never replaced by this
    module (a new root is a ceremony); it warns when the root is near its end.
  - Revocations are permanent and recorded in C(revoked.json); the CRL is re-signed when it
    lists something else or when its next update is near.
options:
  path:
    description: CA directory (created with mode 0700).
    type: path
    required: true
  passphrase:
    description: Passphrase that protects both CA keys.
    type: str
    required: true
    no_log: true
  kdf_iterations:
    description: PBKDF2 iterations for new keys (at least 100000).
    type: int
    default: 600000
  organization:
    description: O= of the CA names.
    type: str
    default: SecureCore
  root_common_name:
    description: CN of the root CA.
    type: str
    default: SecureCore Root CA
  intermediate_common_name:
    description: CN of the intermediate CA.
    type: str
    default: SecureCore Intermediate CA
  root_validity_days:
    description: Validity of a new root CA.
    type: int
    default: 3650
  intermediate_validity_days:
    description: Validity of a new intermediate CA (never beyond the root's).
    type: int
    default: 1095
  intermediate_renew_before_days:
    description: Re-issue the intermediate when fewer days than this remain.
    type: int
    default: 180
  crl_validity_days:
    description: Time from one CRL to its next update.
    type: int
    default: 7
  crl_renew_before_days:
    description: Re-sign the CRL when its next update is closer than this.
    type: int
    default: 3
  revoke:
    description: Certificates to revoke, as C({serial, reason}); serials in hex.
    type: list
    elements: dict
    default: []
  hold_hosts:
    description:
      - Hosts the CA holds (contained hosts): every unexpired certificate it issued to each
        (by its records, not the host's word) is revoked for key compromise, and it issues
        each nothing until released. A certificate is issued to HOST when its common name is
        HOST or ends in /HOST, a DNS name is HOST or HOST.DOMAIN, or a URI ends in /HOST.
    type: list
    elements: str
    default: []
  release_hosts:
    description: Held hosts the CA issues certificates to again (their revocations stay).
    type: list
    elements: str
    default: []
notes:
  - Supports check mode.
author: SecureCore developers
"""

EXAMPLES = r"""
- name: The site CA
  pki_ca:
    path: /srv/securecore-ca
    passphrase: "{{ vault_pki_ca_passphrase }}"
    revoke:
      - {serial: 5f3a0c..., reason: key_compromise}
  delegate_to: localhost
  run_once: true
  register: ca
"""

RETURN = r"""
root_pem:
  description: The root CA certificate (the trust anchor hosts install).
  returned: unless a new CA would be made in check mode
  type: str
intermediate_pem:
  description: The intermediate CA certificate (sent with every leaf certificate).
  returned: unless a new CA would be made in check mode
  type: str
crl_pem:
  description: The intermediate's current CRL.
  returned: unless a new CA would be made in check mode
  type: str
root_crl_pem:
  description: The root's current CRL (for verifiers that check every CA of a chain).
  returned: unless a new CA would be made in check mode
  type: str
revoked:
  description: Serials (hex) of every revoked certificate.
  returned: always
  type: list
held:
  description: The hosts the CA holds (issues nothing to).
  returned: always
  type: list
revoked_for:
  description: For each host of I(hold_hosts) and I(release_hosts), the serials of the revoked
    unexpired certificates issued to it.
  returned: always
  type: dict
actions:
  description: What was (or in check mode would be) done.
  returned: always
  type: list
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.securecore_ca import CertificateAuthority
from ansible.module_utils.securecore_pki import (
    MIN_KDF_ITERATIONS,
    PkiError,
    certificate_pem,
    days_remaining,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "passphrase": {"type": "str", "required": True, "no_log": True},
            "kdf_iterations": {"type": "int", "default": 600000},
            "organization": {"type": "str", "default": "SecureCore"},
            "root_common_name": {"type": "str", "default": "SecureCore Root CA"},
            "intermediate_common_name": {"type": "str", "default": "SecureCore Intermediate CA"},
            "root_validity_days": {"type": "int", "default": 3650},
            "intermediate_validity_days": {"type": "int", "default": 1095},
            "intermediate_renew_before_days": {"type": "int", "default": 180},
            "crl_validity_days": {"type": "int", "default": 7},
            "crl_renew_before_days": {"type": "int", "default": 3},
            "revoke": {"type": "list", "elements": "dict", "default": []},
            "hold_hosts": {"type": "list", "elements": "str", "default": []},
            "release_hosts": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    params = module.params
    if params["kdf_iterations"] < MIN_KDF_ITERATIONS:
        module.fail_json(
            msg=f"kdf_iterations: {params['kdf_iterations']} is below {MIN_KDF_ITERATIONS}"
        )
    if params["crl_renew_before_days"] >= params["crl_validity_days"]:
        module.fail_json(
            msg="crl_renew_before_days must be smaller than crl_validity_days, "
            "or the CRL would be re-signed on every run"
        )
    if params["intermediate_renew_before_days"] >= params["intermediate_validity_days"]:
        module.fail_json(
            msg="intermediate_renew_before_days must be smaller than intermediate_validity_days"
        )
    authority = CertificateAuthority(params["path"], params["passphrase"], params["kdf_iterations"])
    try:
        actions = authority.ensure(params, module.check_mode)
        result = {
            "changed": bool(actions),
            "actions": actions,
            "revoked": sorted(authority.revocations()),
            "held": sorted(authority.held()),
            "revoked_for": authority.revoked_for(params["hold_hosts"] + params["release_hosts"]),
        }
    except (PkiError, OSError) as error:
        module.fail_json(msg=f"pki_ca {params['path']}: {error}")
    root, intermediate = authority.root, authority.intermediate
    if root is not None and intermediate is not None and os.path.exists(authority.file("crl.pem")):
        for name, key in (("crl.pem", "crl_pem"), ("root-crl.pem", "root_crl_pem")):
            if os.path.exists(authority.file(name)):
                with open(authority.file(name), encoding="ascii") as handle:
                    result[key] = handle.read()
        result["root_pem"] = certificate_pem(root)
        result["intermediate_pem"] = certificate_pem(intermediate)
        if days_remaining(root) < params["intermediate_renew_before_days"]:
            module.warn(
                f"the root CA in {params['path']} expires in {days_remaining(root)} days: "
                "plan the new root (a ceremony this module does not automate)"
            )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
