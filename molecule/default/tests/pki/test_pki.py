"""The PKI on the lab hosts after site.yml: keys, chains, and mutual TLS 1.3 between two hosts.

core-01 serves with its server certificate (openssl s_server, as the service
user, with the site's CRL); dmz-01 connects with its client certificate. Every
refusal the policy promises is tried with a real certificate on a real host.
The firewall lets dmz-01 reach core-01 on the core service's port only, where the
core service listens: it is stopped for the length of each exchange and started
again after, so the refusals are openssl's and the service is back for what follows.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from cryptography import x509

from tests.support.commands import run
from tests.support.labhosts import TLS, Listener, lab_spec
from tests.support.roleplugins import load_module_utils

SPEC = lab_spec()
HOSTS = {h.name: h for h in SPEC.hosts}
PORT = 8443
CA_DIR = SPEC.state_dir / "pki-ca"
PASSPHRASE = (SPEC.state_dir / "secrets" / "pki_ca_passphrase").read_text().strip()


@contextmanager
def tls_server(hosts) -> Iterator[Listener]:
    command = (
        f"openssl s_server -accept 0.0.0.0:{PORT} -tls1_3 -Verify 2 -verify_return_error "
        f"-cert {TLS}/server.pem -key {TLS}/server.key -cert_chain {TLS}/intermediate.pem "
        f"-CAfile {TLS}/ca.pem "
        f"-CRL {TLS}/crl.pem -crl_check -www"
    )
    core = hosts["core-01"]
    core.check_output("systemctl stop securecore")
    try:
        with Listener(core, PORT, command=command, user="securecore") as listener:
            yield listener
    finally:
        core.check_output("systemctl start securecore")
        wait_listening(core, PORT)


def wait_listening(host, port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not host.socket(f"tcp://0.0.0.0:{port}").is_listening:
        assert time.monotonic() < deadline, f"nothing listens on port {port} again"
        time.sleep(1)


def tls_client(hosts, credentials: str):
    """From dmz-01, as the service user: one HTTP request over mutual TLS 1.3 to core-01."""
    client = (
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | "
        "timeout 15 openssl s_client -brief -ign_eof -tls1_3 "
        f"-connect {HOSTS['core-01'].address}:{PORT} -verify_hostname core-01 "
        f"-CAfile {TLS}/ca.pem -verify_return_error {credentials}"
    )
    return hosts["dmz-01"].run(f"runuser -u securecore -- sh -c {shlex.quote(client)}")


def credentials(directory: str = TLS) -> str:
    """s_client options for a client certificate (the file holds leaf and chain; s_client
    sends only the first certificate unless told the chain)."""
    return (
        f"-cert {directory}/client.pem -key {directory}/client.key "
        f"-cert_chain {directory}/client.pem"
    )


def serial_of(host, path: str) -> str:
    out = host.check_output(f"openssl x509 -in {path} -noout -serial")
    return out.split("=", 1)[1].strip().lower().lstrip("0")


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_keys_belong_to_the_service_user_and_every_chain_verifies(hosts, name) -> None:
    host = hosts[name]
    for cert, purpose in (("server", "sslserver"), ("client", "sslclient")):
        key = host.file(f"{TLS}/{cert}.key")
        assert key.user == "securecore" and key.mode == 0o600
        verified = host.run(
            f"openssl verify -CAfile {TLS}/ca.pem -untrusted {TLS}/{cert}.pem -crl_check "
            f"-CRLfile {TLS}/crl.pem -purpose {purpose} {TLS}/{cert}.pem"
        )
        assert verified.rc == 0 and verified.stdout.strip().endswith(": OK"), verified.stderr
    sans = host.check_output(f"openssl x509 -in {TLS}/server.pem -noout -ext subjectAltName")
    assert f"DNS:{name}" in sans and f"IP Address:{HOSTS[name].address}" in sans
    uri = host.check_output(f"openssl x509 -in {TLS}/client.pem -noout -ext subjectAltName")
    # A host's principal names its zone: its segment's, but core for the cold site's
    # hosts (inventories/lab/group_vars/dr_core/pki.yml).
    zone = {"dr_core": "core"}.get(HOSTS[name].segment, HOSTS[name].segment)
    assert f"URI:spiffe://securecore/{zone}/{name}" in uri
    policy = json.loads(host.file(f"{TLS}/policy.json").content_string)
    assert policy["minimum_version"] == policy["maximum_version"] == "TLSv1.3"
    assert policy["verify_client"] == "required"


def test_no_host_key_was_copied_to_the_controller() -> None:
    """Only the CA's encrypted keys and the administrator's own key live on the controller."""
    for path in SPEC.state_dir.rglob("*"):
        if not path.is_file() or "admins" in path.parts:
            continue
        assert b"-----BEGIN PRIVATE KEY-----" not in path.read_bytes(), path


def test_mutual_tls_13_between_dmz_and_core(hosts) -> None:
    with tls_server(hosts):
        answer = tls_client(hosts, credentials())
    assert "HTTP/1.0 200 ok" in answer.stdout, answer.stdout + answer.stderr
    assert "Protocol version: TLSv1.3" in answer.stderr


def test_without_a_client_certificate_the_core_refuses(hosts) -> None:
    with tls_server(hosts):
        answer = tls_client(hosts, "")
    assert "200 ok" not in answer.stdout
    assert "certificate required" in answer.stderr, answer.stderr


def test_a_certificate_from_another_ca_is_refused(hosts) -> None:
    dmz = hosts["dmz-01"]
    dmz.check_output(
        "set -e; rm -rf /tmp/other-ca; mkdir /tmp/other-ca; cd /tmp/other-ca; "
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
        "-subj '/CN=Other Root' -keyout ca.key -out ca.pem 2>/dev/null; "
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
        "-subj '/O=SecureCore/OU=dmz/CN=dmz-01' -keyout client.key -out client.csr 2>/dev/null; "
        "printf 'extendedKeyUsage=clientAuth\\n' > ext; "
        "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -days 1 -extfile ext "
        "-out client.pem 2>/dev/null; chown -R securecore /tmp/other-ca"
    )
    with tls_server(hosts):
        answer = tls_client(hosts, credentials("/tmp/other-ca"))
    assert "200 ok" not in answer.stdout
    assert "unknown ca" in answer.stderr, answer.stderr


def sign_on_the_controller(csr: str, *, days_from: float, days_until: float) -> str:
    """The lab CA issues a client certificate with the given validity (as pki_sign does)."""
    pki = load_module_utils("pki", "securecore_pki", "securecore_ca")
    authority = pki.CertificateAuthority(str(CA_DIR), PASSPHRASE)
    now = datetime.datetime.now(datetime.UTC)
    cert = authority.sign(
        csr,
        usage="client",
        subject=x509.Name.from_rfc4514_string("CN=dmz-01,OU=dmz,O=SecureCore"),
        sans=[x509.UniformResourceIdentifier("spiffe://securecore/dmz/dmz-01")],
        validity_days=1,
        valid_from=now + datetime.timedelta(days=days_from),
        valid_until=now + datetime.timedelta(days=days_until),
    )
    return pki.certificate_pem(cert) + pki.certificate_pem(authority.intermediate)


def test_an_expired_client_certificate_is_refused(hosts) -> None:
    dmz = hosts["dmz-01"]
    dmz.check_output(
        "set -e; rm -rf /tmp/expired; mkdir /tmp/expired; "
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
        "-subj '/CN=dmz-01' -keyout /tmp/expired/client.key -out /tmp/expired/client.csr "
        "2>/dev/null; chown -R securecore /tmp/expired"
    )
    csr = dmz.file("/tmp/expired/client.csr").content_string
    chain = sign_on_the_controller(csr, days_from=-30, days_until=-1)
    dmz.check_output(f"printf %s {shlex.quote(chain)} > /tmp/expired/client.pem")
    with tls_server(hosts):
        answer = tls_client(hosts, credentials("/tmp/expired"))
    assert "200 ok" not in answer.stdout
    assert "certificate expired" in answer.stderr, answer.stderr


def test_a_revoked_certificate_is_refused_and_its_holder_gets_a_new_one(hosts) -> None:
    dmz = hosts["dmz-01"]
    dmz.check_output(
        f"install -d -o securecore /tmp/old && "
        f"install -o securecore -m 0600 {TLS}/client.key /tmp/old/client.key && "
        f"install -o securecore -m 0644 {TLS}/client.pem /tmp/old/client.pem"
    )
    old_serial = serial_of(dmz, f"{TLS}/client.pem")
    revoke = {"pki_revoke": [{"serial": old_serial, "reason": "key_compromise"}]}
    proc = run("ansible-playbook", "playbooks/pki.yml", "-e", json.dumps(revoke))
    recap = proc.stdout.split("PLAY RECAP", 1)[1]
    assert re.search(r"dmz-01\s+:.*changed=[1-9]", recap), recap
    assert serial_of(dmz, f"{TLS}/client.pem") != old_serial
    with tls_server(hosts):
        refused = tls_client(hosts, credentials("/tmp/old"))
        renewed = tls_client(hosts, credentials())
    assert "200 ok" not in refused.stdout
    assert "certificate revoked" in refused.stderr, refused.stderr
    assert "HTTP/1.0 200 ok" in renewed.stdout, renewed.stderr
    # The revocation is the CA's record now: a run without the variable keeps it.
    # On the holder's host: its certificate and the CRL stay as they are.
    again = run("ansible-playbook", "playbooks/pki.yml", "--limit", "dmz-01")
    assert all(" changed=0 " in line for line in again.stdout.splitlines() if " ok=" in line)
