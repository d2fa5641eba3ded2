"""The site's certificate authority: a directory on the controller.

Layout of the directory (mode 0700):
  root-ca.key, intermediate-ca.key   encrypted PKCS#8 (PBKDF2-HMAC-SHA256, AES-256-CBC), 0600
  root-ca.pem, intermediate-ca.pem   the CA certificates
  crl.pem                            the intermediate's CRL (leaf revocations)
  root-crl.pem                       the root's CRL (empty: an intermediate is replaced,
                                     never revoked); verifiers that check every CA of
                                     the chain (PostgreSQL) need one for the root too
  revoked.json                       every revocation ever made (revocation is permanent)
  held.json                          hosts the CA issues nothing to (contained hosts)
  issued/SERIAL.pem                  every certificate issued, like OpenSSL's newcerts
"""

from __future__ import annotations

import datetime
import json
import os
import re

from ansible.module_utils.securecore_pki import (
    DEFAULT_KDF_ITERATIONS,
    USAGES,
    PkiError,
    build_name,
    certificate_pem,
    days_remaining,
    encrypt_private_key,
    generate_key,
    is_signed_by,
    load_encrypted_key,
    not_after,
    utcnow,
    write_atomically,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# Certificates start slightly in the past so that hosts whose clocks lag a
# little (chrony keeps them within seconds) accept them at once.
CLOCK_SKEW = datetime.timedelta(minutes=5)

REVOCATION_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "certificate_hold": x509.ReasonFlags.certificate_hold,
}


def normalise_serial(value) -> str:
    """Serials as lowercase hex without separators ('0x', ':' and case accepted)."""
    if isinstance(value, int):
        return format(value, "x")
    text = str(value).strip().lower().replace(":", "")
    text = text[2:] if text.startswith("0x") else text
    if not re.fullmatch(r"[0-9a-f]+", text):
        raise PkiError(f"serial {value!r} is not a hexadecimal certificate serial number")
    return text.lstrip("0") or "0"


def names_host(subject: x509.Name, sans: list, host: str) -> bool:
    """Whether a certificate of SUBJECT and SANS (x509 general names) is one the site's PKI
    issues to HOST: its common name is HOST or ends in /HOST (database/HOST,
    monitoring/HOST), a DNS name is HOST or HOST.DOMAIN, or a URI ends in /HOST
    (spiffe://TRUST-DOMAIN/ZONE/HOST)."""
    names = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    dns = [n.value for n in sans if isinstance(n, x509.DNSName)]
    uris = [n.value for n in sans if isinstance(n, x509.UniformResourceIdentifier)]
    return (
        any(n == host or n.endswith("/" + host) for n in names)
        or any(n == host or n.startswith(host + ".") for n in dns)
        or any(n.endswith("/" + host) for n in uris)
    )


def _sans(cert: x509.Certificate) -> list:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def spki_sha256(public_key) -> str:
    """The SHA-256 of a public key's SubjectPublicKeyInfo: a key, whatever certifies it."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()


def _read_certificate(path: str) -> x509.Certificate | None:
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        try:
            return x509.load_pem_x509_certificate(handle.read())
        except ValueError as error:
            raise PkiError(f"{path}: not a PEM certificate") from error


class CertificateAuthority:
    def __init__(self, path: str, passphrase: str, kdf_iterations: int = DEFAULT_KDF_ITERATIONS):
        self.path = path
        self.passphrase = passphrase
        self.kdf_iterations = kdf_iterations

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # --- reading --------------------------------------------------------------

    @property
    def root(self) -> x509.Certificate | None:
        return _read_certificate(self.file("root-ca.pem"))

    @property
    def intermediate(self) -> x509.Certificate | None:
        return _read_certificate(self.file("intermediate-ca.pem"))

    def crl(self, name: str = "crl.pem") -> x509.CertificateRevocationList | None:
        path = self.file(name)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as handle:
            try:
                return x509.load_pem_x509_crl(handle.read())
            except ValueError as error:
                raise PkiError(f"{path}: not a PEM CRL") from error

    def _json(self, name: str, empty):
        path = self.file(name)
        if not os.path.exists(path):
            return empty
        with open(path, encoding="utf-8") as handle:
            try:
                return json.load(handle)
            except ValueError as error:
                raise PkiError(f"{path}: not valid JSON ({error})") from error

    def revocations(self) -> dict[str, dict]:
        return {entry["serial"]: entry for entry in self._json("revoked.json", [])}

    def issued(self, serial: str) -> x509.Certificate | None:
        return _read_certificate(self.file(f"issued/{serial}.pem"))

    def issued_to(self, host: str) -> dict[str, x509.Certificate]:
        """{serial: certificate} of every unexpired certificate issued to HOST, renewed
        ones included (a renewal keeps the key: the earlier certificate still proves it)."""
        directory = self.file("issued")
        if not os.path.isdir(directory):
            return {}
        now = utcnow()
        found = {}
        for name in sorted(os.listdir(directory)):
            cert = _read_certificate(os.path.join(directory, name))
            if cert is None or not_after(cert) <= now:
                continue
            if names_host(cert.subject, _sans(cert), host):
                found[name.removesuffix(".pem")] = cert
        return found

    def held(self) -> dict[str, dict]:
        """{host: {since, ...}}: the hosts the CA issues nothing to."""
        return self._json("held.json", {})

    def revoked_for(self, hosts: list[str]) -> dict[str, list[str]]:
        """{host: serials}: the revoked unexpired certificates issued to each of HOSTS."""
        revoked = self.revocations()
        return {host: sorted(set(self.issued_to(host)) & set(revoked)) for host in hosts}

    # --- the CA certificates --------------------------------------------------

    def ensure(self, settings: dict, check_mode: bool) -> list[str]:
        """Make the directory, root, intermediate and CRL what settings want."""
        actions: list[str] = []
        if not os.path.isdir(self.path):
            actions.append(f"create {self.path}")
            if not check_mode:
                os.makedirs(self.path, mode=0o700)
                os.makedirs(self.file("issued"), mode=0o700)
        elif not check_mode:
            os.chmod(self.path, 0o700)
            os.makedirs(self.file("issued"), mode=0o700, exist_ok=True)

        root = self.root
        if root is None:
            if os.path.exists(self.file("root-ca.key")):
                raise PkiError(
                    f"{self.file('root-ca.key')} exists but root-ca.pem does not: restore the "
                    "certificate from backup; a new root would invalidate every certificate"
                )
            actions.append("create the root CA")
            if check_mode:
                created = ["create the intermediate CA", "create the CRL", "create the root CRL"]
                return [*actions, *created]
            root = self._create_root(settings)
        else:
            # Decrypting proves the passphrase before anything else is done.
            load_encrypted_key(self.file("root-ca.key"), self.passphrase)

        intermediate = self.intermediate
        reason = self._intermediate_problem(intermediate, root, settings)
        if reason:
            actions.append(f"issue the intermediate CA ({reason})")
            if check_mode:
                return [*actions, "re-sign the CRL"]
            intermediate = self._create_intermediate(root, settings)

        actions += self._record_holds(settings, check_mode)
        requests = list(settings.get("revoke") or [])
        # A held host's keys count as stolen: every unexpired certificate the CA issued to
        # it is revoked, found in the CA's own records - never in what the host says.
        requests += [
            {"serial": serial, "reason": "key_compromise"}
            for host in settings.get("hold_hosts") or []
            for serial in self.issued_to(host)
        ]
        revoke_actions = self._record_revocations(requests, check_mode)
        actions += revoke_actions
        crl_reason = self._crl_problem(intermediate, settings)
        if revoke_actions or crl_reason:
            actions.append(f"re-sign the CRL ({crl_reason or 'new revocations'})")
            if not check_mode:
                self._write_crl(intermediate, settings)
        root_crl_reason = self._root_crl_problem(root, settings)
        if root_crl_reason:
            actions.append(f"re-sign the root CRL ({root_crl_reason})")
            if not check_mode:
                self._sign_crl("root-crl.pem", root, "root-ca.key", {}, settings)
        return actions

    def _create_root(self, settings: dict) -> x509.Certificate:
        key = generate_key()
        now = utcnow()
        name = build_name(settings["root_common_name"], settings.get("organization", ""))
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=settings["root_validity_days"]))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        write_atomically(self.file("root-ca.key"), self._encrypt(key), 0o600)
        write_atomically(self.file("root-ca.pem"), certificate_pem(cert).encode(), 0o644)
        return cert

    def _intermediate_problem(self, intermediate, root, settings) -> str:
        if intermediate is None:
            return "none yet"
        if not is_signed_by(intermediate, root):
            return "not issued by the current root"
        remaining = days_remaining(intermediate)
        if remaining < settings["intermediate_renew_before_days"]:
            return f"{remaining} days left"
        return ""

    def _create_intermediate(self, root: x509.Certificate, settings: dict) -> x509.Certificate:
        root_key = load_encrypted_key(self.file("root-ca.key"), self.passphrase)
        key = generate_key()
        now = utcnow()
        wanted_end = now + datetime.timedelta(days=settings["intermediate_validity_days"])
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                build_name(settings["intermediate_common_name"], settings.get("organization", ""))
            )
            .issuer_name(root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(min(wanted_end, not_after(root)))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(_authority_key_id(root), critical=False)
            .sign(root_key, hashes.SHA256())
        )
        write_atomically(self.file("intermediate-ca.key"), self._encrypt(key), 0o600)
        write_atomically(self.file("intermediate-ca.pem"), certificate_pem(cert).encode(), 0o644)
        return cert

    def _encrypt(self, key) -> bytes:
        return encrypt_private_key(key, self.passphrase, self.kdf_iterations)

    # --- revocation -----------------------------------------------------------

    def _record_revocations(self, requests: list, check_mode: bool) -> list[str]:
        recorded = self.revocations()
        actions = []
        for request in requests:
            serial = normalise_serial(request["serial"])
            reason = request.get("reason") or "unspecified"
            if reason not in REVOCATION_REASONS:
                raise PkiError(
                    f"revoke: serial {serial}: reason {reason!r} is not one of "
                    f"{', '.join(REVOCATION_REASONS)}"
                )
            if serial in recorded:
                continue
            if self.issued(serial) is None:
                raise PkiError(
                    f"revoke: serial {serial} was not issued by this CA "
                    f"(no {self.file('issued/' + serial + '.pem')})"
                )
            recorded[serial] = {
                "serial": serial,
                "reason": reason,
                "revoked_at": utcnow().isoformat(timespec="seconds"),
            }
            if reason == "key_compromise":
                # The key itself is stolen: no certificate for it is issued again.
                recorded[serial]["spki_sha256"] = spki_sha256(self.issued(serial).public_key())
            actions.append(f"revoke {serial} ({reason})")
        if actions and not check_mode:
            entries = sorted(recorded.values(), key=lambda entry: entry["revoked_at"])
            write_atomically(
                self.file("revoked.json"), json.dumps(entries, indent=2).encode(), 0o644
            )
        return actions

    def _record_holds(self, settings: dict, check_mode: bool) -> list[str]:
        held = self.held()
        actions = []
        for host in settings.get("hold_hosts") or []:
            if host not in held:
                held[host] = {"since": utcnow().isoformat(timespec="seconds")}
                actions.append(f"hold {host} (issue it nothing)")
        for host in settings.get("release_hosts") or []:
            if host in held:
                del held[host]
                actions.append(f"release {host}")
        if actions and not check_mode:
            write_atomically(self.file("held.json"), json.dumps(held, indent=2).encode(), 0o644)
        return actions

    def _crl_problem(self, intermediate: x509.Certificate, settings: dict) -> str:
        crl = self.crl()
        if crl is None:
            return "none yet"
        if crl.issuer != intermediate.subject or not crl.is_signature_valid(
            intermediate.public_key()
        ):
            return "not signed by the current intermediate"
        listed = {format(entry.serial_number, "x") for entry in crl}
        if listed != set(self.revocations()):
            return "its entries differ from revoked.json"
        return self._renewal_due(crl, settings)

    def _root_crl_problem(self, root: x509.Certificate, settings: dict) -> str:
        crl = self.crl("root-crl.pem")
        if crl is None:
            return "none yet"
        if crl.issuer != root.subject or not crl.is_signature_valid(root.public_key()):
            return "not signed by the root"
        return self._renewal_due(crl, settings)

    @staticmethod
    def _renewal_due(crl: x509.CertificateRevocationList, settings: dict) -> str:
        next_update = getattr(crl, "next_update_utc", None) or crl.next_update.replace(
            tzinfo=datetime.UTC
        )
        left = next_update - utcnow()
        if left < datetime.timedelta(days=settings["crl_renew_before_days"]):
            return f"next update due in {left.days} days"
        return ""

    def _write_crl(self, intermediate: x509.Certificate, settings: dict) -> None:
        self._sign_crl("crl.pem", intermediate, "intermediate-ca.key", self.revocations(), settings)

    def _sign_crl(
        self,
        name: str,
        issuer: x509.Certificate,
        key_file: str,
        revocations: dict[str, dict],
        settings: dict,
    ) -> None:
        key = load_encrypted_key(self.file(key_file), self.passphrase)
        now = utcnow()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(now - CLOCK_SKEW)
            .next_update(now + datetime.timedelta(days=settings["crl_validity_days"]))
            .add_extension(_authority_key_id(issuer), critical=False)
            # A CRL number that only grows: seconds since the epoch.
            .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
        )
        for entry in revocations.values():
            revoked_at = datetime.datetime.fromisoformat(entry["revoked_at"])
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(entry["serial"], 16))
                .revocation_date(revoked_at)
                .add_extension(x509.CRLReason(REVOCATION_REASONS[entry["reason"]]), critical=False)
                .build()
            )
        crl = builder.sign(key, hashes.SHA256())
        write_atomically(self.file(name), crl.public_bytes(serialization.Encoding.PEM), 0o644)

    # --- issuing leaf certificates -----------------------------------------------

    def _refuse_held(self, subject: x509.Name, sans: list, public_key) -> None:
        """A contained host is issued nothing, and a stolen key is certified never again."""
        for host, hold in self.held().items():
            if names_host(subject, sans, host):
                raise PkiError(
                    f"{host} is held by this CA since {hold.get('since')} (a contained host: "
                    "release it first, playbooks/incident/release.yml)"
                )
        digest = spki_sha256(public_key)
        for entry in self.revocations().values():
            if entry.get("spki_sha256") == digest:
                raise PkiError(
                    f"csr: its key is that of certificate {entry['serial']}, revoked for key "
                    "compromise: make a new key"
                )

    def sign(
        self,
        csr_pem: str,
        *,
        usage: str,
        subject: x509.Name,
        sans: list,
        validity_days: int,
        valid_from: datetime.datetime | None = None,
        valid_until: datetime.datetime | None = None,
    ) -> x509.Certificate:
        """Issue a leaf certificate for the CSR's key.

        Only the public key is taken from the CSR (after checking its
        signature, i.e. that the requester holds the private key); the names
        and usage come from the caller, so a host cannot ask for names that
        are not its own.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as error:
            raise PkiError("csr: not a PEM certificate signing request") from error
        if not csr.is_signature_valid:
            raise PkiError("csr: its signature does not verify (proof of possession fails)")
        public_key = csr.public_key()
        if (
            not isinstance(public_key, ec.EllipticCurvePublicKey)
            or public_key.curve.name != "secp256r1"
        ):
            raise PkiError("csr: the key is not an ECDSA P-256 key")
        self._refuse_held(subject, sans, public_key)
        intermediate = self.intermediate
        if intermediate is None:
            raise PkiError(f"{self.path}: no intermediate CA yet (run the CA step first)")
        key = load_encrypted_key(self.file("intermediate-ca.key"), self.passphrase)
        now = utcnow()
        start = valid_from or now - CLOCK_SKEW
        end = valid_until or now + datetime.timedelta(days=validity_days)
        end = min(end, not_after(intermediate))
        if end <= start:
            raise PkiError(
                f"validity: the certificate would end ({end}) before it starts ({start})"
            )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(intermediate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(USAGES[usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(_authority_key_id(intermediate), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(key, hashes.SHA256())
        serial = format(cert.serial_number, "x")
        write_atomically(self.file(f"issued/{serial}.pem"), certificate_pem(cert).encode(), 0o644)
        return cert


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
