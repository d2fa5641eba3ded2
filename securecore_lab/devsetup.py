"""`securecore-lab init DIR`: a working development setup in one directory, without Ansible.

DIR/config.toml        the same format roles/securecore renders in production
DIR/secrets/           random PINs and the audit HMAC key (0600)
DIR/softhsm/ or keys/  a SoftHSM token with the service's keys, or key files
                       where SoftHSM is not installed (said clearly)
DIR/tls/               a development CA, a server, an admin, a core (the service calling
                       plugins), a plugin ("example") and a DMZ edge (dmz/dev-edge, trusted
                       only once [edge] principals names it) certificate,
                       and the TLS policy (TLS 1.3, mutual)
DIR/data/              the empty audit database and its witness directory
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securecore.audit.store import SQLiteAuditStore
from securecore.keys.base import KeyBackend
from securecore_lab.errors import LabError

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
KEYS = (("securecore-signing", "ec_p256"), ("securecore-kek", "aes256"))


class SetupError(LabError):
    """The development setup cannot be made; nothing that existed was changed."""


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def init(
    directory: str | Path, *, prefer_hsm: bool = True, log: Callable[[str], object] = print
) -> Path:
    base = Path(directory).resolve()
    config_path = base / "config.toml"
    if config_path.exists():
        raise SetupError(f"{config_path} exists already; choose an empty directory")
    if base.exists() and any(base.iterdir()):
        raise SetupError(f"{base} is not empty; choose an empty directory")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in ("secrets", "tls", "data", "data/witness", "backups"):
        (base / name).mkdir(mode=0o700)
    _write_private(base / "secrets" / "audit_hmac_key", secrets.token_hex(32).encode())

    use_hsm = prefer_hsm and SOFTHSM_MODULE.exists()
    if use_hsm:
        keys_section = _softhsm_token(base)
        log(f"keys: SoftHSM2 token 'securecore' in {base / 'softhsm'}")
    else:
        keys_section = _software_keys(base)
        log(
            "keys: SoftHSM2 is not installed, so the keys are FILES in "
            f"{base / 'keys'} (development only; production uses an HSM)"
        )
    _development_pki(base / "tls")
    SQLiteAuditStore(base / "data" / "audit.db").close()
    config_path.write_text(
        "# SecureCore development configuration, made by `securecore-lab init`.\n"
        "[service]\n"
        'name = "securecore"\n'
        'listen = "127.0.0.1:8443"\n'
        'data_dir = "data"\n\n'
        "[tls]\n"
        'policy = "tls/policy.json"\n\n' + keys_section + "\n[audit]\n"
        'database = "data/audit.db"\n'
        'witness_dir = "data/witness"\n'
        'origin = "securecore.localhost/audit"\n'
        'hmac_key_file = "secrets/audit_hmac_key"\n'
        "checkpoint_every = 1000\n"
        "checkpoint_interval_seconds = 10\n"
        "# This host's own checkpoint keys, pinned (production pins the core hosts').\n"
        'origin_keys = "origin-keys.json"\n\n'
        "[plugins]\n"
        "# The service calls plugins as spiffe://securecore/core/localhost; the\n"
        "# development plugin tls/plugin-policy.json is vendor example.\n"
        'client_certificate = "tls/core.pem"\n'
        'client_key = "tls/core.key"\n'
        "vendors = { example = 80 }\n"
        "# Plugins serve on loopback only; the administrator may call every operation\n"
        "# of every plugin, nobody else any (default deny).\n"
        'allowed_networks = ["127.0.0.1/32", "::1/128"]\n\n'
        "[[plugins.access]]\n"
        'principals = ["admin/*"]\n'
        'plugins = ["*"]\n'
        'operations = ["*"]\n\n'
        "[backup]\n"
        'directory = "backups"\n',
        encoding="utf-8",
    )
    config_path.chmod(0o600)
    log(f"config: {config_path}")
    log(f"admin client certificate: {base / 'tls' / 'admin.pem'} (key admin.key)")
    log(f"development plugin TLS policy: {base / 'tls' / 'plugin-policy.json'}")
    log(f"check it: securecore audit verify -c {config_path}")
    return config_path


def _pin_own_origin_keys(base: Path, backend: KeyBackend) -> None:
    """origin-keys.json: the checkpoint keys a standby or witness of this setup pins."""
    from securecore.audit.witness import origin_keys_document

    name = KEYS[0][0]
    keys = {f"{name}-v{v}": backend.public_key(f"{name}-v{v}") for v in backend.versions(name)}
    document = origin_keys_document("securecore.localhost/audit", keys)
    (base / "origin-keys.json").write_text(document + "\n", encoding="utf-8")


def _create_keys(backend: KeyBackend, base: Path) -> None:
    for name, kind in KEYS:
        backend.create_version(name, kind)
    _pin_own_origin_keys(base, backend)


def _software_keys(base: Path) -> str:
    from securecore.keys.software import SoftwareKeys

    (base / "keys").mkdir(mode=0o700)
    _create_keys(SoftwareKeys(base / "keys"), base)
    return '[keys]\nbackend = "software"\n\n[keys.software]\ndirectory = "keys"\n'


def _softhsm_token(base: Path) -> str:
    tokens = base / "softhsm" / "tokens"
    (base / "softhsm").mkdir(mode=0o700)
    tokens.mkdir(mode=0o700)
    conf = base / "softhsm" / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    so_pin, user_pin = secrets.token_hex(8), secrets.token_hex(8)
    _write_private(base / "secrets" / "hsm_so_pin", so_pin.encode())
    _write_private(base / "secrets" / "hsm_user_pin", user_pin.encode())
    # Through the PKCS#11 API in this process, so the PINs are on no command
    # line (softhsm2-util takes them only as arguments, or from a terminal).
    os.environ["SOFTHSM2_CONF"] = str(conf)  # read once, when the library is loaded
    from securecore.keys.token_init import TokenInitError, initialise_token

    try:
        initialise_token(str(SOFTHSM_MODULE), "securecore", so_pin, user_pin)
    except TokenInitError as error:
        raise SetupError(f"the SoftHSM2 token could not be made: {error}") from error
    from securecore.keys.pkcs11 import Pkcs11Keys

    backend = Pkcs11Keys(str(SOFTHSM_MODULE), "securecore", user_pin)
    try:
        _create_keys(backend, base)
    finally:
        backend.close()
    return (
        '[keys]\nbackend = "pkcs11"\n\n[keys.pkcs11]\n'
        f'module = "{SOFTHSM_MODULE}"\n'
        'token_label = "securecore"\n'
        'user_pin_file = "secrets/hsm_user_pin"\n'
        'softhsm_conf = "softhsm/softhsm2.conf"\n'
    )


def development_ca(
    name: str = "SecureCore Development CA",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A one-level development CA: (certificate, private key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca, ca_key


def development_leaves() -> dict[str, tuple[str, list, list]]:
    """name -> (common name, extended key usages, subject alternative names)."""
    localhost = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    return {
        "server": ("localhost", [ExtendedKeyUsageOID.SERVER_AUTH], localhost),
        "admin": (
            "admin",
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            [x509.UniformResourceIdentifier("spiffe://securecore/admin/admin")],
        ),
        # The service's own identity when it calls plugins.
        "core": (
            "core",
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            [x509.UniformResourceIdentifier("spiffe://securecore/core/localhost")],
        ),
        # A development plugin ("example"): it serves TLS and registers as a client.
        "plugin": (
            "example",
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            [*localhost, x509.UniformResourceIdentifier("spiffe://securecore/plugin/example")],
        ),
        # A DMZ edge, relaying its clients' certificates when [edge] principals names it.
        "edge": (
            "dev-edge",
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            [x509.UniformResourceIdentifier("spiffe://securecore/dmz/dev-edge")],
        ),
    }


def issue_development_leaf(
    tls: Path,
    name: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    spec: tuple[str, list, list] | None = None,
) -> None:
    """TLS/NAME.pem and NAME.key (0600), issued by CA, as development_leaves() describes
    (or SPEC: common name, extended key usages, subject alternative names)."""
    common_name, usages, sans = spec or development_leaves()[name]
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=180))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        # OpenSSL's strict verification (the TLS policy sets it) wants both.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    # Written beside, then renamed: a re-issue replaces the key in one step.
    _write_private(
        tls / f"{name}.key.new",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    (tls / f"{name}.key.new").replace(tls / f"{name}.key")
    (tls / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _development_pki(tls: Path) -> None:
    """A development CA, a server certificate for localhost, admin, core, plugin and edge
    clients."""
    ca, ca_key = development_ca()
    (tls / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name in development_leaves():
        issue_development_leaf(tls, name, ca, ca_key)
    # The development CA keeps no CRL, so the policy does not check one.
    policy = {
        "ca_file": str(tls / "ca.pem"),
        "crl_check": "none",
        "server_certificate": str(tls / "server.pem"),
        "server_key": str(tls / "server.key"),
        "client_certificate": str(tls / "admin.pem"),
        "client_key": str(tls / "admin.key"),
    }
    (tls / "policy.json").write_text(json.dumps(policy, indent=2) + "\n")
    plugin_policy = {
        **policy,
        "server_certificate": str(tls / "plugin.pem"),
        "server_key": str(tls / "plugin.key"),
        "client_certificate": str(tls / "plugin.pem"),
        "client_key": str(tls / "plugin.key"),
    }
    (tls / "plugin-policy.json").write_text(json.dumps(plugin_policy, indent=2) + "\n")
