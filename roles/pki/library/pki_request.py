#!/usr/bin/python
"""Ansible module: a host's private key, and a CSR when its certificate needs (re)issuing."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pki_request
short_description: Keep a private key on the host and say whether its certificate must be (re)issued
description:
  - Runs on the host that uses the certificate. Creates an ECDSA P-256 private key (mode 0600,
    owned by O(owner)) when there is none; the key never leaves the host.
  - Compares the certificate at O(certificate_path) with what is wanted - same key, subject,
    SANs, extended key usage, issued by O(issuer), at least O(renew_before_days) days of validity
    left - and, when anything differs, returns a CSR and the reasons. M(pki_sign) then issues
    the certificate on the controller.
  - Warns when the current certificate has fewer than O(warn_before_days) days left.
options:
  key_path:
    description: Path of the private key (PKCS#8 PEM).
    type: path
    required: true
  certificate_path:
    description: Path of the certificate (leaf first, then the chain).
    type: path
    required: true
  owner:
    description: Owner of the key (default the user the module runs as).
    type: str
  group:
    description: Group of the key (default the group the module runs as).
    type: str
  usage:
    description: C(server), C(client) or C(peer) (both), as in M(pki_sign).
    type: str
    required: true
    choices: [client, peer, server]
  common_name:
    description: CN wanted in the subject.
    type: str
    required: true
  organization:
    description: O= wanted in the subject.
    type: str
    default: SecureCore
  organizational_unit:
    description: OU= wanted in the subject.
    type: str
    default: ""
  dns_names:
    description: DNS SANs wanted.
    type: list
    elements: str
    default: []
  ip_addresses:
    description: IP SANs wanted.
    type: list
    elements: str
    default: []
  uris:
    description: URI SANs wanted.
    type: list
    elements: str
    default: []
  issuer:
    description: PEM of the CA that must have issued the certificate (the intermediate).
    type: str
  crl:
    description: PEM of the issuer's CRL; a certificate listed in it is replaced, on a new key.
    type: str
  renew_before_days:
    description: A certificate with fewer days left than this is renewed (REQ-PKI-4, 3 months).
    type: int
    default: 90
  warn_before_days:
    description: Warn when the current certificate has fewer days left than this (REQ-PKI-5).
    type: int
    default: 30
  new_key:
    description: Replace the private key with a new one (key rotation); the certificate follows.
    type: bool
    default: false
notes:
  - Supports check mode.
author: SecureCore developers
"""

EXAMPLES = r"""
- name: Server key and, if needed, a CSR
  pki_request:
    key_path: /etc/securecore/tls/server.key
    certificate_path: /etc/securecore/tls/server.pem
    owner: securecore
    group: securecore
    usage: server
    common_name: core-01
    dns_names: [core-01]
    ip_addresses: [10.2.200.11]
    issuer: "{{ ca.intermediate_pem }}"
  register: request
"""

RETURN = r"""
needs_certificate:
  description: Whether a certificate must be issued.
  returned: always
  type: bool
reasons:
  description: Why the current certificate is not kept.
  returned: always
  type: list
csr:
  description: The CSR (PEM) for the host's key.
  returned: when needs_certificate and the key exists
  type: str
days_remaining:
  description: Days of validity left on the current certificate (null when there is none).
  returned: always
  type: int
serial:
  description: Serial (hex) of the current certificate.
  returned: when there is a certificate
  type: str
"""

import grp
import os
import pwd

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.securecore_pki import (
    CERTIFICATE_NAME_OPTIONS,
    PkiError,
    build_name,
    build_sans,
    certificate_problems,
    days_remaining,
    generate_key,
    is_revoked,
    private_key_pem,
    split_pem_certificates,
    wanted_san_strings,
    write_atomically,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

KEY_MODE = 0o600


def load_key(path: str):
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError) as error:
        raise PkiError(
            f"{path}: not an unencrypted PEM private key; move it away to have a new key made"
        ) from error


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "key_path": {"type": "path", "required": True},
            "certificate_path": {"type": "path", "required": True},
            "owner": {"type": "str"},
            "group": {"type": "str"},
            **CERTIFICATE_NAME_OPTIONS,
            "issuer": {"type": "str"},
            "crl": {"type": "str"},
            "renew_before_days": {"type": "int", "default": 90},
            "warn_before_days": {"type": "int", "default": 30},
            "new_key": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    key_path, cert_path = params["key_path"], params["certificate_path"]
    try:
        uid = pwd.getpwnam(params["owner"]).pw_uid if params["owner"] else os.getuid()
        gid = grp.getgrnam(params["group"]).gr_gid if params["group"] else os.getgid()
    except KeyError as error:
        module.fail_json(msg=f"pki_request {key_path}: no such user or group: {error}")

    changed, actions = False, []
    try:
        key = None
        if os.path.exists(key_path) and not params["new_key"]:
            key = load_key(key_path)
            status = os.stat(key_path)
            if (status.st_uid, status.st_gid, status.st_mode & 0o7777) != (uid, gid, KEY_MODE):
                changed = True
                actions.append("fix owner and mode of the key")
                if not module.check_mode:
                    os.chown(key_path, uid, gid)
                    os.chmod(key_path, KEY_MODE)
        else:
            changed = True
            actions.append("generate a new private key")
            if not module.check_mode:
                key = generate_key()
                write_atomically(key_path, private_key_pem(key), KEY_MODE, (uid, gid))

        subject = build_name(
            params["common_name"], params["organization"], params["organizational_unit"]
        )
        sans = build_sans(params["dns_names"], params["ip_addresses"], params["uris"])
        issuer = (
            x509.load_pem_x509_certificate(params["issuer"].encode()) if params["issuer"] else None
        )
        current = None
        if os.path.exists(cert_path):
            with open(cert_path, "rb") as handle:
                chain = split_pem_certificates(handle.read())
            current = chain[0] if chain else None
        if current is None:
            reasons = ["no certificate yet"]
        elif key is None:
            reasons = ["a new key is being made"]
        else:
            reasons = certificate_problems(
                current,
                public_key=key.public_key(),
                subject=subject,
                sans=wanted_san_strings(
                    params["dns_names"], params["ip_addresses"], params["uris"]
                ),
                usage=params["usage"],
                issuer=issuer,
                renew_before_days=params["renew_before_days"],
            )
            if params["crl"] and is_revoked(current, params["crl"]):
                reasons.append("it is revoked")
                # Its key may be what was stolen (the CA certifies a key revoked for
                # compromise never again): the new certificate gets a new key.
                changed = True
                actions.append("generate a new private key (the certificate is revoked)")
                key = None
                if not module.check_mode:
                    key = generate_key()
                    write_atomically(key_path, private_key_pem(key), KEY_MODE, (uid, gid))
    except (PkiError, OSError, ValueError) as error:
        module.fail_json(msg=f"pki_request {cert_path}: {error}")

    result = {
        "changed": changed,
        "actions": actions,
        "needs_certificate": bool(reasons),
        "reasons": reasons,
        "days_remaining": None,
    }
    if current is not None:
        remaining = days_remaining(current)
        result["days_remaining"] = remaining
        result["serial"] = format(current.serial_number, "x")
        if remaining < params["warn_before_days"]:
            module.warn(
                f"{cert_path} ({params['common_name']}) expires in {remaining} days, "
                f"below the {params['warn_before_days']}-day alert threshold"
            )
    if reasons and key is not None:
        builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        csr = builder.sign(key, hashes.SHA256())
        result["csr"] = csr.public_bytes(serialization.Encoding.PEM).decode()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
