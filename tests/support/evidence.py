"""Compliance evidence for tests: attesters' keys, certificates of a people CA, report rows."""

from __future__ import annotations

import datetime
from pathlib import Path

from compliance.evidence import generate_key


def attesters(directory: Path, *names: str) -> Path:
    """A signing key per person (as `compliance keygen` makes them) and the attesters
    file that pins each one's public key for their name."""
    lines = ["attesters:"]
    for name in names:
        generate_key(directory / f"{name}.key")
        lines.append(f"  {name}: {name}.key.pub")
    path = directory / "attesters.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


NOW = datetime.datetime.now(datetime.UTC)


def issued_certificate(subject: str, public, issuer_name: str, issuer_key, days: int = 30):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .sign(issuer_key, hashes.SHA256())
    )


RESULTS = [
    {
        "check": "ssh.keys_only",
        "host": "core-01",
        "status": "fail",
        "severity": "high",
        "controls": {"iso27001-2022": ["A.8.5"]},
        "detail": 'sshd.banner = "<script>alert(1)</script>"',
        "waiver": None,
    },
    {
        "check": "tls.policy",
        "host": "core-01",
        "status": "waived",
        "severity": "critical",
        "controls": {"soc2-tsc": ["CC6.7"]},
        "detail": "x",
        "waiver": {"reason": "migration <b>", "approver": "ciso", "expires": "2027-01-01"},
    },
    {
        "check": "time.synchronized",
        "host": "dmz-01",
        "status": "pass",
        "severity": "medium",
        "controls": {},
        "detail": "ok",
        "waiver": None,
    },
]


HOSTS = [
    {"host": "core-01", "groups": ["core"], "error": None, "seconds": 1.4},
    {"host": "gone", "groups": [], "error": "unreachable: <timeout>", "seconds": 0},
]
