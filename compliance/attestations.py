"""Attestations: what only a person can do, recorded - who, when, what, which files.

`compliance attest ITEM --by NAME --note TEXT --key KEY [--file PATH ...]` writes
one record into the attestation store (a directory; one file per attestation,
never rewritten), signed with that person's own ECDSA P-256 key (a key file or
a PKCS#11 URI, like the evidence key). Each attached file is recorded by name,
size and SHA-256, so what was shown can be proved later. An attestation counts
for its checklist's period: the UTC day (daily), ISO week (weekly) or month
(monthly) in which it was made; until then the item is pending, never passed.

A name is only a claim: a checklist run counts an attestation only when its
signature verifies with the public key that the attesters file (`--attesters`,
kept by whoever runs the checklists) pins for that name - or, for a person
attesting with a certificate (`compliance attest --certificate`), when that
certificate was issued by a certificate authority the attesters file pins, was
valid when the attestation was made, names the person (its subject common name
is the name claimed) and holds the key that signed. An unsigned record, an
unknown name, or a record signed by another key than the one pinned for the
name it claims is not counted - the item stays pending - and the report lists it
with the reason, so a forged attestation is visible rather than silent.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from compliance.checklists import Checklist
from compliance.errors import ComplianceError
from compliance.evidence import (
    EvidenceError,
    SigningKey,
    TrustAnchor,
    key_id,
    load_yaml,
    public_key_named,
    signed_record,
    verified_record,
)


class AttestationError(ComplianceError):
    """An attestation cannot be recorded as asked; nothing was written."""


@dataclass(frozen=True)
class Attestation:
    item: str
    by: str
    note: str
    at: datetime.datetime
    files: tuple[dict, ...]
    key_id: str | None = None  # the signer's key, once verified

    def as_dict(self) -> dict:
        return {
            "item": self.item,
            "by": self.by,
            "note": self.note,
            "at": self.at.isoformat(),
            "files": list(self.files),
            **({"signed_by": self.key_id} if self.key_id else {}),
        }


class Attesters(dict[str, ec.EllipticCurvePublicKey]):
    """NAME -> the public key pinned for that person; and the certificate authorities
    whose certificates name attesters (by subject common name)."""

    authorities: tuple[x509.Certificate, ...] = ()


def _common_name(certificate: x509.Certificate) -> str | None:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _certified(
    pem: str, claimed: str | None, at: str, authorities: tuple[x509.Certificate, ...], where: str
) -> ec.EllipticCurvePublicKey:
    """The key of a person's certificate, if a pinned authority issued it to CLAIMED and
    it was valid at AT; AttestationError otherwise."""
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
        moment = datetime.datetime.fromisoformat(at)
    except (ValueError, TypeError) as error:
        raise AttestationError(f"{where}: unreadable certificate or time ({error})") from error
    issuer = next((ca for ca in authorities if ca.subject == certificate.issuer), None)
    try:
        if issuer is None:
            raise ValueError("no pinned certificate authority issued it")
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as error:
        raise AttestationError(
            f"{where}: the certificate of {claimed} does not verify ({error or 'bad signature'})"
        ) from error
    if _common_name(certificate) != claimed:
        raise AttestationError(
            f"{where}: the certificate names {_common_name(certificate)!r}, "
            f"but the attestation claims to be by {claimed}"
        )
    if not certificate.not_valid_before_utc <= moment < certificate.not_valid_after_utc:
        raise AttestationError(f"{where}: made at {at}, outside its certificate's validity")
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise AttestationError(f"{where}: the certificate's key is not ECDSA P-256")
    return public


def load_attesters(path: Path) -> Attesters:
    """The attesters file: `attesters: {NAME: PEM public key file (relative to this file)
    or the PEM itself}` - whose signature counts for which name."""
    try:
        document = load_yaml(path, "attesters file")
        entries = document.get("attesters") if isinstance(document, dict) else None
        if not isinstance(entries, dict):
            raise AttestationError(
                f"{path}: an attesters file is `attesters: {{NAME: PUBLIC KEY}}`"
            )
        attesters = Attesters(
            {
                str(name): public_key_named(value, path.parent, f"{path}: attester {name}")
                for name, value in entries.items()
            }
        )
        authorities = document.get("certificate_authorities") or []
        if not isinstance(authorities, list):
            raise AttestationError(
                f"{path}: certificate_authorities is a list of PEM "
                "certificates (files or the PEM itself)"
            )
        attesters.authorities = tuple(
            _certificate_named(value, path.parent, f"{path}: certificate authority {number}")
            for number, value in enumerate(authorities, 1)
        )
    except EvidenceError as error:
        raise AttestationError(str(error)) from error
    return attesters


def period_of(checklist: str, moment: datetime.datetime) -> str:
    if checklist == "daily":
        return moment.date().isoformat()
    if checklist == "weekly":
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    return moment.strftime("%Y-%m")


def _certificate_named(value: object, base: Path, where: str) -> x509.Certificate:
    text = str(value or "")
    try:
        data = text.encode() if "-----BEGIN" in text else (base / text).read_bytes()
        return x509.load_pem_x509_certificate(data)
    except OSError as error:
        raise AttestationError(f"{where}: {text}: cannot read it ({error.strerror})") from error
    except ValueError as error:
        raise AttestationError(f"{where}: not a PEM certificate") from error


def record(
    store: Path,
    checklists: dict[str, Checklist],
    item: str,
    by: str,
    note: str,
    files: list[Path],
    key: SigningKey,
    now: datetime.datetime | None = None,
    certificate: x509.Certificate | None = None,
) -> Path:
    owner = next((c for c in checklists.values() for i in c.items if i.id == item), None)
    if owner is None:
        known = ", ".join(
            i.id for c in checklists.values() for i in c.items if i.attested_controls is not None
        )
        raise AttestationError(f"no checklist item {item!r} (attestable: {known})")
    entry = next(i for i in owner.items if i.id == item)
    if entry.attested_controls is None:
        raise AttestationError(f"{item} is checked by the machine only ({', '.join(entry.checks)})")
    if not by.strip() or not note.strip():
        raise AttestationError("--by and --note must say who and what")
    attached = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise AttestationError(f"{path}: cannot read it ({error.strerror})") from error
        attached.append(
            {"name": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    moment = now or datetime.datetime.now(datetime.UTC)
    attestation = Attestation(item, by.strip(), note.strip(), moment, tuple(attached))
    store.mkdir(parents=True, exist_ok=True, mode=0o750)
    path = store / f"{moment.strftime('%Y%m%dT%H%M%S.%fZ')}-{item}.json"
    document = attestation.as_dict()
    if certificate is not None:
        # Refused here already, so that a person sees the mistake, not the auditor.
        if key_id(certificate.public_key()) != key_id(key.public_key()):
            raise AttestationError("--certificate is not the certificate of --key")
        if _common_name(certificate) != attestation.by:
            raise AttestationError(
                f"--certificate names {_common_name(certificate)!r}, not --by {attestation.by!r}"
            )
        document["certificate"] = certificate.public_bytes(serialization.Encoding.PEM).decode()
    signed = signed_record(document, key)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(signed)
    return path


def _verified(
    data: Any,
    path: Path,
    attesters: Attesters | None,
) -> tuple[dict[str, Any], ec.EllipticCurvePublicKey]:
    """The attestation in DATA and its signer's key, if signed by the key pinned for the
    name it claims (or certified for it); AttestationError saying why not otherwise."""
    if not isinstance(data, dict) or "signature" not in data or "record" not in data:
        raise AttestationError(f"{path.name}: not signed - a self-declared name counts for nothing")
    claimed = data["record"].get("by") if isinstance(data["record"], dict) else None
    if attesters is None:
        raise AttestationError(
            f"{path.name}: by {claimed}: no attesters file (--attesters) "
            "to check its signature against"
        )
    if claimed is not None and claimed in attesters:
        public = attesters[claimed]
    elif data["record"].get("certificate") and attesters.authorities:
        public = _certified(
            data["record"]["certificate"],
            claimed,
            data["record"].get("at"),
            attesters.authorities,
            path.name,
        )
    else:
        raise AttestationError(f"{path.name}: by {claimed}, who is not in the attesters file")
    try:
        return verified_record(data, TrustAnchor.of(public), "at", path.name), public
    except EvidenceError as error:
        raise AttestationError(f"{error} (claims to be by {claimed})") from error


def current(
    store: Path,
    checklist: str,
    item: str,
    now: datetime.datetime | None = None,
    attesters: Attesters | None = None,
) -> tuple[Attestation | None, list[str]]:
    """The newest verified attestation of ITEM made in the current period, if any, and
    why each other record of ITEM in the period does not count."""
    moment = now or datetime.datetime.now(datetime.UTC)
    wanted = period_of(checklist, moment)
    found, rejected = None, []
    for path in sorted(store.glob(f"*-{item}.json")) if store.is_dir() else []:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            claimed = raw.get("record", raw) if isinstance(raw, dict) else {}
            if period_of(checklist, datetime.datetime.fromisoformat(claimed["at"])) != wanted:
                continue
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            rejected.append(f"{path.name}: unreadable")
            continue
        try:
            data, public = _verified(raw, path, attesters)
            at = datetime.datetime.fromisoformat(data["at"])
            if data.get("item") != item or period_of(checklist, at) != wanted:
                raise AttestationError(
                    f"{path.name}: signed for {data.get('item')} at "
                    f"{data.get('at')}, not for {item} in {wanted}"
                )
            found = Attestation(
                item, data["by"], data["note"], at, tuple(data.get("files", [])), key_id(public)
            )
        except (AttestationError, KeyError, TypeError, ValueError) as error:
            rejected.append(str(error))
    return found, rejected
