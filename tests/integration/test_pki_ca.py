"""roles/pki's modules on the controller, and the site's TLS policy in real handshakes.

The modules run through `ansible localhost -m ...` as the role runs them;
certificates are checked with `openssl verify` and used in TLS 1.3 handshakes
on loopback with the contexts of securecore.tls.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securecore.tls import TLSPolicy, TLSPolicyError
from tests.support.commands import needs, run_module

PASSPHRASE = "ca-passphrase-example-0815"


def ca(path: Path, check: bool = False, **extra) -> dict:
    return run_module(
        "pki",
        "pki_ca",
        {"path": str(path), "passphrase": PASSPHRASE, **extra},
        check=check,
        secrets=(PASSPHRASE,),
    )


def request(directory: Path, name: str, usage: str = "server", **extra) -> dict:
    return run_module(
        "pki",
        "pki_request",
        {
            "key_path": str(directory / f"{name}.key"),
            "certificate_path": str(directory / f"{name}.pem"),
            "usage": usage,
            "common_name": name,
            **extra,
        },
    )


def sign(ca_dir: Path, csr: str, name: str, usage: str = "server", **extra) -> dict:
    return run_module(
        "pki",
        "pki_sign",
        {
            "ca_path": str(ca_dir),
            "passphrase": PASSPHRASE,
            "csr": csr,
            "usage": usage,
            "common_name": name,
            **extra,
        },
        secrets=(PASSPHRASE,),
    )


def issue(ca_dir: Path, directory: Path, name: str, usage: str, **names) -> dict:
    """Key and CSR by pki_request, certificate by pki_sign, chain written as the role does."""
    issuer = (ca_dir / "intermediate-ca.pem").read_text()
    timing = {key: names.pop(key) for key in ("not_before", "not_after") if key in names}
    asked = request(directory, name, usage, issuer=issuer, **names)
    assert asked["needs_certificate"], asked
    signed = sign(ca_dir, asked["csr"], name, usage, **names, **timing)
    (directory / f"{name}.pem").write_text(signed["chain_pem"])
    return signed


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A fresh CA directory with root, intermediate and CRL."""
    needs("openssl", "ansible")
    made = ca(tmp_path / "ca")
    assert made["changed"], made
    return tmp_path / "ca"


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def iso(days: float) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
    return moment.isoformat()


# --- the CA -------------------------------------------------------------------


def test_ca_keys_are_encrypted_pkcs8_with_600000_pbkdf2_iterations(site: Path) -> None:
    assert site.stat().st_mode & 0o777 == 0o700
    for key in ("root-ca.key", "intermediate-ca.key"):
        path = site / key
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        parsed = openssl("asn1parse", "-in", str(path)).stdout
        assert ":PBES2" in parsed and ":PBKDF2" in parsed and ":hmacWithSHA256" in parsed
        assert ":aes-256-cbc" in parsed
        assert ":0927C0" in parsed  # INTEGER 600000, the iteration count
        assert openssl("pkey", "-in", str(path), "-passin", "pass:wrong", "-noout").returncode
        good = openssl("pkey", "-in", str(path), "-passin", f"pass:{PASSPHRASE}", "-noout")
        assert good.returncode == 0, good.stderr


def test_ca_is_idempotent_and_check_mode_changes_nothing(site: Path) -> None:
    before = {p.name: p.read_bytes() for p in site.iterdir() if p.is_file()}
    again = ca(site)
    assert again["changed"] is False and again["actions"] == []
    checked = ca(site, check=True)
    assert checked["changed"] is False
    assert {p.name: p.read_bytes() for p in site.iterdir() if p.is_file()} == before
    root = x509.load_pem_x509_certificate(again["root_pem"].encode())
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and root.signature_hash_algorithm.name == "sha256"


def test_check_mode_on_an_empty_directory_writes_nothing(tmp_path: Path) -> None:
    checked = ca(tmp_path / "ca", check=True)
    assert checked["changed"] is True and "create the root CA" in checked["actions"]
    assert not (tmp_path / "ca").exists()


def test_wrong_passphrase_is_a_clear_error_that_changes_nothing(site: Path) -> None:
    crl = (site / "crl.pem").read_bytes()
    result = run_module(
        "pki",
        "pki_ca",
        {"path": str(site), "passphrase": "not-the-passphrase"},
        secrets=("not-the-passphrase", PASSPHRASE),
    )
    assert result.get("failed")
    assert "root-ca.key: cannot decrypt the key with the given passphrase" in result["msg"]
    assert (site / "crl.pem").read_bytes() == crl


def test_too_few_kdf_iterations_are_refused(tmp_path: Path) -> None:
    result = ca(tmp_path / "ca", kdf_iterations=10000)
    assert result.get("failed") and "kdf_iterations: 10000 is below 100000" in result["msg"]
    assert not (tmp_path / "ca").exists()


# --- leaf certificates --------------------------------------------------------


def test_issued_chain_verifies_with_openssl_and_carries_the_wanted_names(
    site: Path, tmp_path: Path
) -> None:
    signed = issue(
        site,
        tmp_path,
        "core-01",
        "server",
        dns_names=["core-01", "core-01.example.internal"],
        ip_addresses=["10.2.200.11"],
    )
    key = tmp_path / "core-01.key"
    assert key.stat().st_mode & 0o777 == 0o600
    verified = openssl(
        "verify",
        "-CAfile",
        str(site / "root-ca.pem"),
        "-untrusted",
        str(tmp_path / "core-01.pem"),
        "-crl_check",
        "-CRLfile",
        str(site / "crl.pem"),
        "-purpose",
        "sslserver",
        str(tmp_path / "core-01.pem"),
    )
    assert verified.returncode == 0 and ": OK" in verified.stdout, verified.stdout + verified.stderr
    cert = x509.load_pem_x509_certificate(signed["certificate_pem"].encode())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert cert.signature_hash_algorithm.name == "sha256"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["core-01", "core-01.example.internal"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.2.200.11"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert (site / "issued" / f"{signed['serial']}.pem").exists()
    # Short validity by default: 180 days.
    assert 179 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 181


def test_a_good_certificate_is_kept(site: Path, tmp_path: Path) -> None:
    issue(site, tmp_path, "plugin-01", "client", uris=["spiffe://securecore/plugin/plugin-01"])
    again = request(
        tmp_path,
        "plugin-01",
        "client",
        issuer=(site / "intermediate-ca.pem").read_text(),
        uris=["spiffe://securecore/plugin/plugin-01"],
    )
    assert again["changed"] is False and again["needs_certificate"] is False, again
    assert "csr" not in again and again["days_remaining"] >= 179


def test_a_peer_certificate_serves_and_connects_and_a_changed_usage_is_reissued(
    site: Path, tmp_path: Path
) -> None:
    # A cluster member (etcd 3.4) presents one certificate to the peers it serves and
    # to those it connects to: both extended key usages, each checked by OpenSSL.
    names = {"dns_names": ["core-02"], "ip_addresses": ["10.2.200.12"]}
    signed = issue(site, tmp_path, "core-02", "peer", **names)
    (tmp_path / "core-02.pem").write_text(signed["chain_pem"])
    for purpose in ("sslserver", "sslclient"):
        verified = openssl(
            "verify",
            "-CAfile",
            str(site / "root-ca.pem"),
            "-untrusted",
            str(tmp_path / "core-02.pem"),
            "-purpose",
            purpose,
            str(tmp_path / "core-02.pem"),
        )
        assert verified.returncode == 0, (purpose, verified.stdout + verified.stderr)
    cert = x509.load_pem_x509_certificate(signed["certificate_pem"].encode())
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    # The same names asked for as a server only: the peer certificate is not kept, since
    # it could also act as a client, which a server certificate must not.
    issuer = (site / "intermediate-ca.pem").read_text()
    again = request(tmp_path, "core-02", "server", issuer=issuer, **names)
    assert again["needs_certificate"], again
    assert any("extended key usages" in reason for reason in again["reasons"]), again


def test_short_validity_is_renewed_and_warned_about(site: Path, tmp_path: Path) -> None:
    issue(site, tmp_path, "dmz-01", "server", dns_names=["dmz-01"], not_after=iso(20))
    issuer = (site / "intermediate-ca.pem").read_text()
    asked = request(tmp_path, "dmz-01", "server", issuer=issuer, dns_names=["dmz-01"])
    assert asked["needs_certificate"] and asked["days_remaining"] == 19
    assert asked["reasons"] == ["19 days of validity left (renewal at 90)"]
    assert "below the 30-day alert threshold" in asked["_warnings_text"]
    # Between the thresholds: renewed, without an alert.
    issue(site, tmp_path, "core-02", "server", dns_names=["core-02"], not_after=iso(60))
    asked = request(tmp_path, "core-02", "server", issuer=issuer, dns_names=["core-02"])
    assert asked["needs_certificate"] and "alert threshold" not in asked["_warnings_text"]


def test_changed_names_or_another_issuer_mean_a_new_certificate(site: Path, tmp_path: Path) -> None:
    issue(site, tmp_path, "core-01", "server", dns_names=["core-01"])
    issuer = (site / "intermediate-ca.pem").read_text()
    renamed = request(tmp_path, "core-01", "server", issuer=issuer, dns_names=["core-01", "api"])
    assert renamed["needs_certificate"]
    assert renamed["reasons"] == ["SANs differ (missing: ['DNS:api'], not wanted: [])"]
    other = ca(tmp_path / "other-ca")
    foreign = request(
        tmp_path, "core-01", "server", issuer=other["intermediate_pem"], dns_names=["core-01"]
    )
    assert foreign["reasons"] == ["it was not issued by the current intermediate CA"]


def test_the_ca_takes_names_from_the_playbook_not_from_the_csr(site: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "core-01")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    signed = sign(site, csr, "plugin-01", "server", dns_names=["plugin-01"])
    cert = x509.load_pem_x509_certificate(signed["certificate_pem"].encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["plugin-01"]
    rsa_like = sign(site, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "x")
    assert (
        rsa_like.get("failed") and "csr: not a PEM certificate signing request" in rsa_like["msg"]
    )


def test_revocation_is_permanent_and_reaches_the_crl(site: Path, tmp_path: Path) -> None:
    signed = issue(site, tmp_path, "lost-laptop", "client")
    unknown = ca(site, revoke=[{"serial": "abcdef", "reason": "key_compromise"}])
    assert unknown.get("failed") and "serial abcdef was not issued by this CA" in unknown["msg"]
    revoked = ca(site, revoke=[{"serial": signed["serial"], "reason": "key_compromise"}])
    assert revoked["changed"] and signed["serial"] in revoked["revoked"]
    crl = x509.load_pem_x509_crl(revoked["crl_pem"].encode())
    entry = crl.get_revoked_certificate_by_serial_number(int(signed["serial"], 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name == (
        "key_compromise"
    )
    # The holder's next run replaces it.
    asked = request(
        tmp_path,
        "lost-laptop",
        "client",
        issuer=(site / "intermediate-ca.pem").read_text(),
        crl=revoked["crl_pem"],
    )
    assert asked["needs_certificate"] and asked["reasons"] == ["it is revoked"]
    # Dropping it from the list later un-revokes nothing, and changes nothing.
    later = ca(site)
    assert later["changed"] is False and signed["serial"] in later["revoked"]
    denied = openssl(
        "verify",
        "-CAfile",
        str(site / "root-ca.pem"),
        "-untrusted",
        str(tmp_path / "lost-laptop.pem"),
        "-crl_check",
        "-CRLfile",
        str(site / "crl.pem"),
        str(tmp_path / "lost-laptop.pem"),
    )
    assert denied.returncode != 0 and "certificate revoked" in denied.stdout + denied.stderr


def test_a_held_host_loses_every_certificate_issued_to_it_and_is_issued_nothing(
    site: Path, tmp_path: Path
) -> None:
    """Holding a contained host: the CAs revoke, from their own records, every unexpired
    certificate they issued to it (a renewal's predecessor on the same key too, the
    database CA's as well) and no other host's; they issue it nothing until it is
    released, and its stolen key never again."""
    database = tmp_path / "database-ca"
    assert ca(database)["changed"]
    host = tmp_path / "plugin-01"
    host.mkdir()
    spiffe = {"uris": ["spiffe://securecore/plugin/plugin-01"]}
    asked = request(host, "client", "client", common_name="plugin-01", **spiffe)
    before = sign(site, asked["csr"], "plugin-01", "client", **spiffe)  # renewed: same key
    client = sign(site, asked["csr"], "plugin-01", "client", **spiffe)
    (host / "client.pem").write_text(client["chain_pem"])
    server = sign(site, request(host, "server")["csr"], "plugin-01", dns_names=["plugin-01"])
    peer = request(host, "database", "peer", common_name="database/plugin-01")
    member = sign(database, peer["csr"], "database/plugin-01", "peer")
    others = [issue(site, tmp_path, name, "client")["serial"] for name in ("plugin-011", "core-01")]

    check = ca(site, check=True, hold_hosts=["plugin-01"])
    assert check["changed"] and check["revoked"] == [] and check["held"] == []
    held = {
        "site": ca(site, hold_hosts=["plugin-01"]),
        "db": ca(database, hold_hosts=["plugin-01"]),
    }
    mine = sorted(c["serial"] for c in (before, client, server))
    assert held["site"]["revoked"] == mine and held["site"]["held"] == ["plugin-01"]
    assert held["site"]["revoked_for"] == {"plugin-01": mine}
    assert held["db"]["revoked_for"] == {"plugin-01": [member["serial"]]}
    crl = x509.load_pem_x509_crl(held["site"]["crl_pem"].encode())
    for serial in mine:
        entry = crl.get_revoked_certificate_by_serial_number(int(serial, 16))
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert reason.name == "key_compromise"
    assert all(crl.get_revoked_certificate_by_serial_number(int(s, 16)) is None for s in others)
    assert ca(site, hold_hosts=["plugin-01"])["changed"] is False  # once

    # Held: nothing is issued to it, whatever key it offers.
    fresh = request(tmp_path / "plugin-01", "fresh", "client", common_name="plugin-01")
    refused = sign(site, fresh["csr"], "plugin-01", "client", **spiffe)
    assert refused.get("failed") and "plugin-01 is held by this CA" in refused["msg"]
    # Released: a new key is certified, the stolen one never again.
    assert ca(site, release_hosts=["plugin-01"])["held"] == []
    stolen = sign(site, asked["csr"], "plugin-01", "client", **spiffe)
    assert stolen.get("failed") and "revoked for key compromise: make a new key" in stolen["msg"]
    assert "certificate_pem" in sign(site, fresh["csr"], "plugin-01", "client", **spiffe)
    # The holder of a revoked certificate makes a new key for its next one.
    key = (host / "client.key").read_bytes()
    renewing = request(
        host,
        "client",
        "client",
        common_name="plugin-01",
        issuer=(site / "intermediate-ca.pem").read_text(),
        crl=held["site"]["crl_pem"],
        **spiffe,
    )
    assert renewing["needs_certificate"] and "it is revoked" in renewing["reasons"]
    assert (host / "client.key").read_bytes() != key
    assert "certificate_pem" in sign(site, renewing["csr"], "plugin-01", "client", **spiffe)


def test_every_ca_of_the_chain_has_a_crl_for_verifiers_that_check_them_all(
    site: Path, tmp_path: Path
) -> None:
    """PostgreSQL checks the revocation of every certificate in a client's chain: with the
    intermediate's CRL alone it refuses every client, revoked or not."""
    valid = issue(site, tmp_path, "core-07", "client")
    lost = issue(site, tmp_path, "core-08", "client")
    revoked = ca(site, revoke=[{"serial": lost["serial"], "reason": "key_compromise"}])
    chain = tmp_path / "crl-chain.pem"
    chain.write_text(revoked["crl_pem"] + revoked["root_crl_pem"])
    root_crl = x509.load_pem_x509_crl(revoked["root_crl_pem"].encode())
    root = x509.load_pem_x509_certificate((site / "root-ca.pem").read_bytes())
    assert root_crl.issuer == root.subject and root_crl.is_signature_valid(root.public_key())

    def verify(name: str, crls: Path) -> subprocess.CompletedProcess:
        leaf = str(tmp_path / f"{name}.pem")
        anchor = ["-CAfile", str(site / "root-ca.pem"), "-untrusted", leaf]
        return openssl("verify", *anchor, "-crl_check_all", "-CRLfile", str(crls), leaf)

    assert verify("core-07", chain).returncode == 0, valid
    refused = verify("core-08", chain)
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
    # The intermediate's CRL alone is not enough for such a verifier.
    lone = verify("core-07", site / "crl.pem")
    assert lone.returncode != 0 and "unable to get certificate CRL" in lone.stdout + lone.stderr
    assert ca(site)["changed"] is False  # both CRLs current: nothing to re-sign


# --- the TLS policy in real handshakes ------------------------------------------


def policy_for(site: Path, directory: Path, server: str, client: str | None) -> TLSPolicy:
    return TLSPolicy.from_mapping(
        {
            "ca_file": str(site / "root-ca.pem"),
            "crl_file": str(site / "crl.pem"),
            "server_certificate": str(directory / f"{server}.pem"),
            "server_key": str(directory / f"{server}.key"),
            "client_certificate": str(directory / f"{client}.pem") if client else None,
            "client_key": str(directory / f"{client}.key") if client else None,
        }
    )


def handshake(server_policy: TLSPolicy, client_context: ssl.SSLContext) -> dict:
    """One connection on loopback; returns what the server saw."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    outcome: dict = {}

    def serve() -> None:
        listener.settimeout(10)
        connection, _ = listener.accept()
        try:
            with server_policy.server_context().wrap_socket(connection, server_side=True) as tls:
                outcome["version"] = tls.version()
                outcome["peer"] = tls.getpeercert()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as error:
            outcome["error"] = str(error)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_context.wrap_socket(raw, server_hostname="core-01") as tls,
        ):
            outcome["client_read"] = tls.recv(2)
    except (ssl.SSLError, OSError) as error:
        outcome["client_error"] = str(error)
    thread.join(timeout=15)
    listener.close()
    return outcome


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A CA with a server certificate for core-01 and a client one for dmz-01, shared by the
    handshake tests (a CA and two certificates through the role's modules take half a
    minute). Each test issues what else it needs under a name of its own, so none sees
    another's: the one revocation is of a certificate only its test uses."""
    needs("openssl", "ansible")
    base = tmp_path_factory.mktemp("tls-site")
    site, directory = base / "ca", base / "issued"
    assert ca(site)["changed"]
    directory.mkdir()
    issue(site, directory, "core-01", "server", dns_names=["core-01"], ip_addresses=["127.0.0.1"])
    issue(site, directory, "dmz-01", "client", uris=["spiffe://securecore/dmz/dmz-01"])
    return site, directory


def test_mutual_tls_13_handshake_succeeds_and_names_the_client(tls_site) -> None:
    site, directory = tls_site
    policy = policy_for(site, directory, "core-01", "dmz-01")
    seen = handshake(policy, policy.client_context())
    assert seen.get("version") == "TLSv1.3", seen
    assert seen["client_read"] == b"ok"
    assert ("URI", "spiffe://securecore/dmz/dmz-01") in seen["peer"]["subjectAltName"]


def test_a_client_without_a_certificate_is_refused(tls_site) -> None:
    site, directory = tls_site
    policy = policy_for(site, directory, "core-01", "dmz-01")
    seen = handshake(policy, policy.client_context(with_certificate=False))
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in seen.get("error", ""), seen
    assert seen.get("client_read") != b"ok"


def test_a_client_certificate_from_another_ca_is_refused(tls_site, tmp_path: Path) -> None:
    site, directory = tls_site
    other_ca = tmp_path / "other-ca"
    ca(other_ca)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    issue(other_ca, stranger, "dmz-01", "client")
    server = policy_for(site, directory, "core-01", None)
    client = policy_for(site, stranger, "core-01", "dmz-01")
    seen = handshake(server, client.client_context())
    assert "certificate verify failed" in seen.get("error", ""), seen


def test_an_expired_client_certificate_is_refused(tls_site) -> None:
    site, directory = tls_site
    issue(site, directory, "old", "client", not_before=iso(-30), not_after=iso(-1))
    policy = policy_for(site, directory, "core-01", "old")
    seen = handshake(policy, policy.client_context())
    assert "certificate has expired" in seen.get("error", ""), seen


def test_a_revoked_client_certificate_is_refused(tls_site) -> None:
    site, directory = tls_site
    signed = issue(site, directory, "revoked", "client")
    ca(site, revoke=[{"serial": signed["serial"], "reason": "key_compromise"}])
    policy = policy_for(site, directory, "core-01", "revoked")
    seen = handshake(policy, policy.client_context())
    assert "certificate revoked" in seen.get("error", ""), seen


def test_a_tls_12_client_is_refused(tls_site) -> None:
    site, directory = tls_site
    policy = policy_for(site, directory, "core-01", "dmz-01")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.load_verify_locations(str(site / "root-ca.pem"))
    old.load_cert_chain(str(directory / "dmz-01.pem"), str(directory / "dmz-01.key"))
    seen = handshake(policy, old)
    assert "version" not in seen and "error" in seen, seen


# --- the policy file ------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"minimum_version": "TLSv1.2"}, "minimum_version = 'TLSv1.2': only TLSv1.3 is allowed"),
        ({"verify_client": "optional"}, "verify_client = 'optional': mutual TLS is required"),
        (
            {"ciphersuites": ["TLS_AES_128_CCM_8_SHA256"]},
            "ciphersuites ['TLS_AES_128_CCM_8_SHA256']",
        ),
        ({"ca_fiel": "/x"}, "unknown key(s) ca_fiel"),
        ({"crl_file": None}, "crl_check = 'leaf' needs crl_file"),
    ],
)
def test_a_weaker_policy_is_refused_with_the_key_named(
    tmp_path: Path, change: dict, message: str
) -> None:
    data = {"ca_file": "/etc/securecore/tls/ca.pem", "crl_file": "/etc/securecore/tls/crl.pem"}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({**data, **change}))
    with pytest.raises(TLSPolicyError) as caught:
        TLSPolicy.from_file(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


def test_a_missing_certificate_file_names_the_key(site: Path, tmp_path: Path) -> None:
    policy = policy_for(site, tmp_path, "absent", None)
    with pytest.raises(TLSPolicyError, match=r"server_certificate = .*absent\.pem"):
        policy.server_context()
