"""Shared code of the pki role's modules: key encryption, names, certificate checks.

Runs on the controller (cryptography from the venv) and on the hosts (Debian 12's
python3-cryptography 38), so it uses only APIs that both versions have.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import re
import tempfile

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# REQ-PKI-3 asks for at least 100,000 PBKDF2 iterations; 600,000 is the
# OWASP (2023) figure for PBKDF2-HMAC-SHA256.
MIN_KDF_ITERATIONS = 100_000
DEFAULT_KDF_ITERATIONS = 600_000

# The extended key usages of each kind of certificate. A peer both serves and
# connects with the one certificate: etcd 3.4 presents its peer certificate in
# both directions and has no separate client certificate for its peers.
USAGES = {
    "server": [ExtendedKeyUsageOID.SERVER_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "peer": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
}

# What a certificate is for and whom it names: the same options in the module
# that asks for a certificate (pki_request) and the one that issues it (pki_sign).
CERTIFICATE_NAME_OPTIONS = {
    "usage": {"type": "str", "required": True, "choices": sorted(USAGES)},
    "common_name": {"type": "str", "required": True},
    "organization": {"type": "str", "default": "SecureCore"},
    "organizational_unit": {"type": "str", "default": ""},
    "dns_names": {"type": "list", "elements": "str", "default": []},
    "ip_addresses": {"type": "list", "elements": "str", "default": []},
    "uris": {"type": "list", "elements": "str", "default": []},
}

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


class PkiError(Exception):
    """A problem the caller can act on; the message names what and where."""


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def not_after(cert: x509.Certificate) -> datetime.datetime:
    # not_valid_after_utc exists from cryptography 42 on; Debian 12 has 38.
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.UTC)


def not_before(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=datetime.UTC)


def days_remaining(cert: x509.Certificate, now: datetime.datetime | None = None) -> int:
    return (not_after(cert) - (now or utcnow())).days


def write_atomically(path: str, data: bytes, mode: int, owner: tuple[int, int] | None = None):
    """Write via a temporary file and rename: readers see the old file or the new one,
    never half of one, and a key never exists with looser permissions than `mode`."""
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        os.fchmod(descriptor, mode)
        if owner is not None:
            os.fchown(descriptor, *owner)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


# --- private keys -----------------------------------------------------------


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(encoded)]) + encoded + content


def _der_oid(dotted: str) -> bytes:
    arcs = [int(part) for part in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _der(0x06, bytes(body))


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _der_seq(*parts: bytes) -> bytes:
    return _der(0x30, b"".join(parts))


def encrypt_private_key(key, passphrase: str, iterations: int = DEFAULT_KDF_ITERATIONS) -> bytes:
    """PKCS#8 EncryptedPrivateKeyInfo (PBES2: PBKDF2-HMAC-SHA256, AES-256-CBC) as PEM.

    cryptography's BestAvailableEncryption uses 2,048 PBKDF2 iterations and
    cannot be told otherwise, which is below REQ-PKI-3's floor; this writes the
    same standard structure (RFC 8018) with the iteration count we choose, so
    that cryptography, OpenSSL and every other PKCS#8 reader can still load it.
    """
    if iterations < MIN_KDF_ITERATIONS:
        raise PkiError(f"kdf_iterations: {iterations} is below the minimum {MIN_KDF_ITERATIONS}")
    if not passphrase:
        raise PkiError("the CA passphrase is empty")
    plain = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt, iv = os.urandom(16), os.urandom(16)
    derived = PBKDF2HMAC(
        algorithm=hashes.SHA256(), length=32, salt=salt, iterations=iterations
    ).derive(passphrase.encode())
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(derived), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    pbkdf2_params = _der_seq(
        _der(0x04, salt),
        _der_int(iterations),
        _der_seq(_der_oid("1.2.840.113549.2.9"), b"\x05\x00"),  # hmacWithSHA256
    )
    pbes2_params = _der_seq(
        _der_seq(_der_oid("1.2.840.113549.1.5.12"), pbkdf2_params),  # PBKDF2
        _der_seq(_der_oid("2.16.840.1.101.3.4.1.42"), _der(0x04, iv)),  # aes256-CBC
    )
    document = _der_seq(
        _der_seq(_der_oid("1.2.840.113549.1.5.13"), pbes2_params),  # PBES2
        _der(0x04, ciphertext),
    )
    return pem_armor(document, "ENCRYPTED PRIVATE KEY")


def pem_armor(der: bytes, label: str) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[index : index + 64] for index in range(0, len(body), 64)]
    return (
        b"\n".join([f"-----BEGIN {label}-----".encode(), *lines, f"-----END {label}-----".encode()])
        + b"\n"
    )


def load_encrypted_key(path: str, passphrase: str):
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise PkiError(f"{path}: cannot read the key ({error.strerror})") from error
    try:
        return serialization.load_pem_private_key(data, passphrase.encode())
    except (ValueError, TypeError) as error:
        raise PkiError(
            f"{path}: cannot decrypt the key with the given passphrase "
            "(is pki_ca_passphrase the one the CA was created with?)"
        ) from error


def private_key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_der(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- certificates -----------------------------------------------------------


def split_pem_certificates(data: bytes) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(block) for block in _PEM_CERTIFICATE.findall(data)]


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def build_name(common_name: str, organization: str = "", unit: str = "") -> x509.Name:
    attributes = []
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if unit:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def build_sans(dns_names, ip_addresses, uris) -> list:
    names: list = [x509.DNSName(name) for name in dns_names]
    for address in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(str(address))))
        except ValueError as error:
            raise PkiError(f"ip_addresses: {address!r} is not an IP address") from error
    names.extend(x509.UniformResourceIdentifier(uri) for uri in uris)
    return names


def san_strings(cert: x509.Certificate) -> set[str]:
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    values = set()
    for name in extension.value:
        prefix = {
            x509.DNSName: "DNS",
            x509.IPAddress: "IP",
            x509.UniformResourceIdentifier: "URI",
        }.get(type(name), type(name).__name__)
        values.add(f"{prefix}:{name.value}")
    return values


def wanted_san_strings(dns_names, ip_addresses, uris) -> set[str]:
    return {
        *(f"DNS:{name}" for name in dns_names),
        *(f"IP:{ipaddress.ip_address(str(address))}" for address in ip_addresses),
        *(f"URI:{uri}" for uri in uris),
    }


def extended_key_usages(cert: x509.Certificate) -> set:
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


def is_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        issuer.public_key().verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


def is_revoked(cert: x509.Certificate, crl_pem: str) -> bool:
    crl = x509.load_pem_x509_crl(crl_pem.encode())
    return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def certificate_problems(
    cert: x509.Certificate,
    *,
    public_key,
    subject: x509.Name,
    sans: set[str],
    usage: str,
    issuer: x509.Certificate | None,
    renew_before_days: int,
    now: datetime.datetime | None = None,
) -> list[str]:
    """Why an existing certificate is not the one wanted (empty: keep it)."""
    problems = []
    if public_key_der(cert.public_key()) != public_key_der(public_key):
        problems.append("it does not match the private key")
    if cert.subject != subject:
        problems.append(
            f"subject is {cert.subject.rfc4514_string()}, wanted {subject.rfc4514_string()}"
        )
    present = san_strings(cert)
    if present != sans:
        missing, extra = sorted(sans - present), sorted(present - sans)
        problems.append(f"SANs differ (missing: {missing}, not wanted: {extra})")
    if extended_key_usages(cert) != set(USAGES[usage]):
        problems.append(f"its extended key usages are not those of a {usage} certificate")
    if issuer is not None and not is_signed_by(cert, issuer):
        problems.append("it was not issued by the current intermediate CA")
    remaining = days_remaining(cert, now)
    if remaining < renew_before_days:
        problems.append(f"{remaining} days of validity left (renewal at {renew_before_days})")
    return problems
