#!/usr/bin/python
"""Ansible module: issue a leaf certificate from the site's intermediate CA."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pki_sign
short_description: Issue a server or client certificate for a CSR with the intermediate CA
description:
  - Runs on the controller, where the CA directory made by M(pki_ca) lives. Takes only the
    public key from the CSR (after checking the CSR's signature); subject, SANs and usage
    come from the module's options, so a host cannot obtain names that are not its own.
  - ECDSA P-256 keys only; SHA-256; C(digitalSignature) key usage; the extended key usages
    of O(usage) and no other; never valid beyond the intermediate.
  - Every certificate issued is kept as C(issued/SERIAL.pem) in the CA directory.
  - Always reports a change (it issues a certificate); call it only when M(pki_request) says
    a certificate is needed.
options:
  ca_path:
    description: CA directory.
    type: path
    required: true
  passphrase:
    description: Passphrase of the CA keys.
    type: str
    required: true
    no_log: true
  csr:
    description: The certificate signing request (PEM).
    type: str
    required: true
  usage:
    description: >-
      C(server) (serverAuth), C(client) (clientAuth) or C(peer) (both: a member of a
      cluster that serves its peers and connects to them with one certificate).
    type: str
    required: true
    choices: [client, peer, server]
  common_name:
    description: CN of the subject.
    type: str
    required: true
  organization:
    description: O= of the subject.
    type: str
    default: SecureCore
  organizational_unit:
    description: OU= of the subject (the zone, for example).
    type: str
    default: ""
  dns_names:
    description: DNS names for the SAN extension.
    type: list
    elements: str
    default: []
  ip_addresses:
    description: IP addresses for the SAN extension.
    type: list
    elements: str
    default: []
  uris:
    description: URIs for the SAN extension (for example a SPIFFE id).
    type: list
    elements: str
    default: []
  validity_days:
    description: Days of validity from now.
    type: int
    default: 180
  not_before:
    description: Explicit start of validity (ISO 8601, UTC if no zone); for tests and migrations.
    type: str
  not_after:
    description: Explicit end of validity (ISO 8601, UTC if no zone); overrides O(validity_days).
    type: str
notes:
  - Supports check mode (nothing is issued).
author: SecureCore developers
"""

EXAMPLES = r"""
- name: Sign the host's server certificate
  pki_sign:
    ca_path: /srv/securecore-ca
    passphrase: "{{ vault_pki_ca_passphrase }}"
    csr: "{{ request.csr }}"
    usage: server
    common_name: core-01
    dns_names: [core-01, core-01.example.internal]
    ip_addresses: [10.2.200.11]
  delegate_to: localhost
"""

RETURN = r"""
certificate_pem:
  description: The new certificate.
  returned: unless in check mode
  type: str
chain_pem:
  description: The certificate followed by the intermediate CA (what a TLS peer sends).
  returned: unless in check mode
  type: str
serial:
  description: Serial number in hex.
  returned: unless in check mode
  type: str
not_after:
  description: End of validity (ISO 8601).
  returned: unless in check mode
  type: str
"""

import datetime

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.securecore_ca import CertificateAuthority
from ansible.module_utils.securecore_pki import (
    CERTIFICATE_NAME_OPTIONS,
    PkiError,
    build_name,
    build_sans,
    certificate_pem,
    not_after,
)


def parse_time(option: str, value: str | None) -> datetime.datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError as error:
        raise PkiError(f"{option}: {value!r} is not an ISO 8601 date and time") from error
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "ca_path": {"type": "path", "required": True},
            "passphrase": {"type": "str", "required": True, "no_log": True},
            "csr": {"type": "str", "required": True},
            **CERTIFICATE_NAME_OPTIONS,
            "validity_days": {"type": "int", "default": 180},
            "not_before": {"type": "str"},
            "not_after": {"type": "str"},
        },
        supports_check_mode=True,
    )
    params = module.params
    if module.check_mode:
        module.exit_json(changed=True)
    authority = CertificateAuthority(params["ca_path"], params["passphrase"])
    try:
        cert = authority.sign(
            params["csr"],
            usage=params["usage"],
            subject=build_name(
                params["common_name"], params["organization"], params["organizational_unit"]
            ),
            sans=build_sans(params["dns_names"], params["ip_addresses"], params["uris"]),
            validity_days=params["validity_days"],
            valid_from=parse_time("not_before", params["not_before"]),
            valid_until=parse_time("not_after", params["not_after"]),
        )
    except (PkiError, OSError) as error:
        module.fail_json(msg=f"pki_sign {params['common_name']} ({params['usage']}): {error}")
    leaf = certificate_pem(cert)
    module.exit_json(
        changed=True,
        certificate_pem=leaf,
        chain_pem=leaf + certificate_pem(authority.intermediate),
        serial=format(cert.serial_number, "x"),
        not_after=not_after(cert).isoformat(),
    )


if __name__ == "__main__":
    main()
