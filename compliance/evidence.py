"""Evidence bundles: what a run found, signed, chained to the run before it.

A bundle is a directory EVIDENCE_DIR/BUNDLE_ID/ (BUNDLE_ID is the run's UTC time
and kind, so bundles sort in the order they were made):

  run.json        who ran it, when, the tool's version, the inventory and
                  limit, the SHA-256 of the check definitions and waivers used,
                  and the previous bundle (id and manifest SHA-256)
  results.json    one result per check and host, and each host's gathering
  facts/HOST.json the raw facts gathered from each host (masked: no secrets)
  junit.xml       the results for CI systems
  report.html     the results for a person (html_report.py)
  assessment-results.json   the run as OSCAL 1.1 assessment results (oscal.py)
  manifest.json   the SHA-256 and size of every file above
  signature.json  an ECDSA P-256 / SHA-256 signature of manifest.json, the key
                  id (SHA-256 of the public key) and the public key itself

A period bundle (compliance.period) is written the same way over its own
files (`write_signed_bundle`: the manifest with the signed time, the
signature), so `verify_bundles` checks it as it checks a run's.

`archive` also writes BUNDLE.tar.gz (reproducible). `verify_bundles` checks,
offline, every file's hash, the signature against a trust anchor (pinned
public keys, or a key list with validity periods checked against the signed
time in the manifest; the bundle's own key only on request, and then every
result is UNVERIFIED), the chain (each bundle names its predecessor's manifest
hash, so an altered, removed or inserted bundle is found and named), that the
series directory holds nothing but bundles, their archives (each exactly its
bundle) and the signed retention record, and - given the series head kept
outside the evidence directory - that no newest run is missing.
"""

from __future__ import annotations

import base64
import datetime
import getpass
import gzip
import hashlib
import io
import json
import os
import re
import socket
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from xml.sax.saxutils import escape, quoteattr

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from compliance import __version__
from compliance.errors import ComplianceError

FORMAT = "securecore-evidence/1"
BUNDLE_TIME = "%Y%m%dT%H%M%S.%fZ"  # a bundle id is its signed UTC time, then -KIND
SECRET_KEYS = re.compile(r"(pin|password|passphrase|secret|token|private|hmac)", re.IGNORECASE)
MASK = "***"


class EvidenceError(ComplianceError):
    """A bundle cannot be written, or a signing key cannot be used."""


# --- keys ------------------------------------------------------------------------------


def generate_key(path: Path) -> str:
    """A new ECDSA P-256 signing key in PATH (0600, PKCS#8) and PATH.pub; its key id."""
    if path.exists():
        raise EvidenceError(f"{path}: exists; a signing key is never overwritten")
    key = ec.generate_private_key(ec.SECP256R1())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.with_name(path.name + ".pub").write_bytes(public)
    return key_id(key.public_key())


class SigningKey(Protocol):
    """What signs evidence: a P-256 key from a file (cryptography's EC private key) or
    one on a token (compliance.signing.TokenSigningKey)."""

    def public_key(self) -> ec.EllipticCurvePublicKey: ...

    def sign(self, data: bytes, algorithm: ec.EllipticCurveSignatureAlgorithm, /) -> bytes: ...


def load_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        mode = path.stat().st_mode & 0o077
        if mode:
            raise EvidenceError(f"{path}: readable by others (mode {oct(mode)}); make it 0600")
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise EvidenceError(f"{path}: cannot read the signing key ({error.strerror})") from error
    except ValueError as error:
        raise EvidenceError(f"{path}: not a PEM private key") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise EvidenceError(f"{path}: the signing key must be ECDSA P-256")
    return key


def key_id(public: PublicKeyTypes) -> str:
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


# --- writing ---------------------------------------------------------------------------


def masked(value: Any) -> Any:
    """VALUE with every entry whose name says it is secret replaced by a mask."""
    if isinstance(value, dict):
        return {
            k: (MASK if SECRET_KEYS.search(str(k)) and v not in (None, [], {}) else masked(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def junit(results: list[dict[str, Any]], name: str) -> bytes:
    failures = sum(r["status"] == "fail" for r in results)
    errors = sum(r["status"] == "error" for r in results)
    cases = []
    for r in results:
        body = ""
        if r["status"] == "fail":
            body = f"<failure message={quoteattr(r['detail'])}/>"
        elif r["status"] == "error":
            body = f"<error message={quoteattr(r['detail'])}/>"
        elif r["status"] == "waived":
            body = f"<skipped message={quoteattr('waived: ' + r['waiver']['reason'])}/>"
        elif r["status"] == "not_applicable":
            body = f"<skipped message={quoteattr(r['detail'])}/>"
        cases.append(
            f"  <testcase classname={quoteattr(r['host'])} name={quoteattr(r['check'])}>"
            f"{body}</testcase>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name={quoteattr(name)} tests="{len(results)}" failures="{failures}" '
        f'errors="{errors}">\n' + "\n".join(cases) + "\n</testsuite>\n"
    ).encode()


def previous_bundle(directory: Path) -> dict[str, str] | None:
    bundles = (
        sorted(p for p in directory.iterdir() if (p / "manifest.json").is_file())
        if directory.is_dir()
        else []
    )
    if not bundles:
        return None
    last = bundles[-1]
    digest = hashlib.sha256((last / "manifest.json").read_bytes()).hexdigest()
    return {"id": last.name, "manifest_sha256": digest}


def write_bundle(
    directory: Path,
    kind: str,
    results: list[dict[str, Any]],
    hosts: list[dict[str, Any]],
    facts: dict[str, Any],
    run: dict[str, Any],
    signing_key: SigningKey,
    extra: dict[str, bytes] | None = None,
    previous: dict[str, str] | bool | None = False,
    now: datetime.datetime | None = None,
) -> Path:
    """A new signed bundle in DIRECTORY. PREVIOUS is the predecessor to name (what the
    series head says, see `SeriesHead`); False: the newest bundle in DIRECTORY. NOW is
    the signed time (tests give their own clock)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    if previous is False:
        previous = previous_bundle(directory)
    now = now or datetime.datetime.now(datetime.UTC)
    bundle_id = f"{now.strftime(BUNDLE_TIME)}-{kind}"
    files: dict[str, bytes] = {
        "run.json": _json(
            {
                "format": FORMAT,
                "id": bundle_id,
                "kind": kind,
                "tool": "compliance",
                "version": __version__,
                "finished": now.isoformat(),
                "operator": f"{getpass.getuser()}@{socket.gethostname()}",
                "previous": previous,
                **run,
            }
        ),
        "results.json": _json({"hosts": hosts, "results": results}),
        "junit.xml": junit(results, f"compliance {kind}"),
        **{f"facts/{escape(host)}.json": _json(masked(found)) for host, found in facts.items()},
        **(extra or {}),
    }
    return write_signed_bundle(directory / bundle_id, files, signing_key, now)


def write_signed_bundle(
    target: Path, files: dict[str, bytes], signing_key: SigningKey, now: datetime.datetime
) -> Path:
    """TARGET, a new directory holding FILES (relative name -> bytes), the manifest of
    their SHA-256 and sizes with the signed time NOW, and its signature: what every
    bundle is (a run's, a period's), and what `verify_bundles` checks."""
    staging = target.with_name(f".{target.name}.partial")
    for name, data in files.items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # The signed time lives in the manifest (signed), not only in run.json: retention and
    # key validity periods decide from it, and an edited run.json is caught by its hash.
    manifest = _json(
        {
            "format": FORMAT,
            "id": target.name,
            "signed_at": now.isoformat(),
            "files": {
                name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                for name, data in sorted(files.items())
            },
        }
    )
    (staging / "manifest.json").write_bytes(manifest)
    signature = signing_key.sign(manifest, ec.ECDSA(hashes.SHA256()))
    public = signing_key.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    signed = {
        "algorithm": "ECDSA-P256-SHA256",
        "key_id": key_id(public),
        "public_key": pem,
        "signature": base64.b64encode(signature).decode(),
    }
    (staging / "signature.json").write_bytes(_json(signed))
    staging.rename(target)  # a bundle appears whole, or not at all
    return target


def archive(bundle: Path) -> Path:
    """BUNDLE.tar.gz beside the bundle: the same files, in a fixed order and form, so
    the same bundle always makes the same archive."""
    target = bundle.with_name(bundle.name + ".tar.gz")
    with (
        gzip.GzipFile(target, "wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w") as tar,
    ):
        for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(f"{bundle.name}/{path.relative_to(bundle)}")
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o640
            tar.addfile(info, io.BytesIO(data))
    return target


# --- trust anchors ---------------------------------------------------------------------
#
# A signature proves only who signed; which signer counts is the auditor's choice,
# made outside the evidence: one or more pinned public keys, or a key list with a
# validity period per key (a bundle signed outside its key's period does not verify,
# as a rotated-out key may since have leaked). Trusting the key a bundle carries is
# possible only on request, and every result is then marked UNVERIFIED.


def load_public_key(data: bytes, where: str) -> ec.EllipticCurvePublicKey:
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError as error:
        raise EvidenceError(f"{where}: not a PEM public key") from error
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise EvidenceError(f"{where}: not an ECDSA P-256 public key")
    return public


def _moment(value: Any, where: str) -> datetime.datetime:
    try:
        moment = (
            value
            if isinstance(value, datetime.datetime)
            else datetime.datetime.fromisoformat(str(value))
        )
    except ValueError as error:
        raise EvidenceError(f"{where}: {value!r} is not an ISO 8601 time") from error
    if moment.tzinfo is None:
        raise EvidenceError(f"{where}: {value!r} has no time zone (say Z or +00:00)")
    return moment


@dataclass(frozen=True)
class TrustedKey:
    public: ec.EllipticCurvePublicKey
    source: str
    not_before: datetime.datetime | None = None
    not_after: datetime.datetime | None = None

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def covers(self, moment: datetime.datetime) -> bool:
        return (self.not_before is None or moment >= self.not_before) and (
            self.not_after is None or moment < self.not_after
        )

    def period(self) -> str:
        start = self.not_before.isoformat() if self.not_before else "-"
        end = self.not_after.isoformat() if self.not_after else "-"
        return f"{start} .. {end}"


@dataclass(frozen=True)
class TrustAnchor:
    keys: tuple[TrustedKey, ...] = ()
    embedded: bool = False  # the signer's own embedded key: proves nothing about who

    @classmethod
    def of(cls, *publics: ec.EllipticCurvePublicKey) -> TrustAnchor:
        """The signing process's own key(s): what it accepts of its own earlier output."""
        return cls(tuple(TrustedKey(p, "the signing key") for p in publics))

    @classmethod
    def from_options(
        cls, keys: list[Path] | None = None, key_list: Path | None = None, embedded: bool = False
    ) -> TrustAnchor:
        if embedded:
            if keys or key_list:
                raise EvidenceError(
                    "--trust-embedded-key trusts whatever key a bundle carries; "
                    "give it without --trusted-key/--key-list"
                )
            return cls(embedded=True)
        if not keys and key_list is None:
            raise EvidenceError(
                "no trust anchor: give the evidence public key (--trusted-key PEM, repeatable) "
                "or a key list with validity periods (--key-list FILE); "
                "--trust-embedded-key only inspects, and marks every result UNVERIFIED"
            )
        trusted = []
        for path in keys or []:
            try:
                trusted.append(TrustedKey(load_public_key(path.read_bytes(), str(path)), str(path)))
            except OSError as error:
                raise EvidenceError(f"{path}: cannot read it ({error.strerror})") from error
        if key_list is not None:
            trusted += _key_list(key_list)
        return cls(tuple(trusted))

    def problem(self, public: ec.EllipticCurvePublicKey, signed_at: Any) -> str | None:
        """Why a signature by PUBLIC made at SIGNED_AT does not count; None if it does."""
        if self.embedded:
            return None
        kid = key_id(public)
        matches = [k for k in self.keys if k.key_id == kid]
        if not matches:
            pinned = ", ".join(sorted({k.key_id[:16] + "..." for k in self.keys}))
            return f"signed by key {kid[:16]}..., not by a trusted key ({pinned})"
        if any(k.not_before is None and k.not_after is None for k in matches):
            return None
        if signed_at is None:
            return f"no signed time, and key {kid[:16]}... is trusted only within its period"
        try:
            moment = _moment(signed_at, "the signed time")
        except EvidenceError as error:
            return str(error)
        if any(k.covers(moment) for k in matches):
            return None
        periods = "; ".join(k.period() for k in matches)
        return (
            f"signed at {moment.isoformat()} by key {kid[:16]}..., outside its validity "
            f"period ({periods})"
        )


def load_yaml(path: Path, what: str) -> Any:
    """PATH parsed as YAML (JSON is YAML too), or EvidenceError naming it."""
    import yaml  # the check definitions need it already

    try:
        return yaml.safe_load(path.read_text())
    except OSError as error:
        raise EvidenceError(f"{path}: cannot read the {what} ({error.strerror})") from error
    except yaml.YAMLError as error:
        raise EvidenceError(f"{path}: the {what} is not YAML/JSON ({error})") from error


def public_key_named(value: Any, base: Path, where: str) -> ec.EllipticCurvePublicKey:
    """The public key VALUE is: a PEM itself, or a PEM file relative to BASE."""
    text = str(value or "")
    if "-----BEGIN" in text:
        return load_public_key(text.encode(), where)
    try:
        return load_public_key((base / text).read_bytes(), where)
    except OSError as error:
        raise EvidenceError(f"{where}: {text}: cannot read it ({error.strerror})") from error


def _key_list(path: Path) -> list[TrustedKey]:
    """A key list: YAML or JSON, `keys: [{key: PEM file (relative to the list) or the PEM
    itself, not_before: TIME, not_after: TIME (absent: still valid)}]`."""
    document = load_yaml(path, "key list")
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise EvidenceError(f"{path}: a key list is `keys: [{{key, not_before, not_after}}]`")
    trusted = []
    for number, entry in enumerate(entries, 1):
        where = f"{path}: key {number}"
        if not isinstance(entry, dict) or not entry.get("key") or "not_before" not in entry:
            raise EvidenceError(
                f"{where}: needs `key` and `not_before` (and `not_after` once the key is retired)"
            )
        unknown = set(entry) - {"key", "not_before", "not_after", "comment"}
        if unknown:
            raise EvidenceError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        start = _moment(entry["not_before"], f"{where} not_before")
        end = (
            _moment(entry["not_after"], f"{where} not_after")
            if entry.get("not_after") is not None
            else None
        )
        if end is not None and end <= start:
            raise EvidenceError(f"{where}: not_after is not after not_before")
        trusted.append(
            TrustedKey(public_key_named(entry["key"], path.parent, where), where, start, end)
        )
    return trusted


# --- signed records (retention, series heads) ---------------------------------------------

PRUNED = "PRUNED.json"


def signed_record(record: dict[str, Any], key: SigningKey) -> bytes:
    """RECORD as JSON with an ECDSA signature over its canonical form."""
    body = json.dumps(record, sort_keys=True).encode()
    signature = key.sign(body, ec.ECDSA(hashes.SHA256()))
    public = key.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    signed = {
        "record": record,
        "key_id": key_id(public),
        "public_key": pem,
        "signature": base64.b64encode(signature).decode(),
    }
    return (json.dumps(signed, indent=2, sort_keys=True) + "\n").encode()


def verified_record(
    signed: Any,
    anchor: TrustAnchor,
    time_field: str,
    where: str,
) -> dict[str, Any]:
    """The record of a signed_record() document, if its signature verifies and ANCHOR
    trusts its signer at the record's own (signed) TIME_FIELD."""
    try:
        public = load_public_key(signed["public_key"].encode(), where)
        body = json.dumps(signed["record"], sort_keys=True).encode()
        public.verify(base64.b64decode(signed["signature"]), body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as error:
        raise EvidenceError(f"{where}: the signature does not verify (changed)") from error
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise EvidenceError(f"{where}: unreadable ({error})") from error
    if not isinstance(signed["record"], dict):
        raise EvidenceError(f"{where}: unreadable (the record is not an object)")
    problem = anchor.problem(public, signed["record"].get(time_field))
    if problem:
        raise EvidenceError(f"{where}: {problem}")
    return signed["record"]


def read_signed(path: Path, anchor: TrustAnchor, time_field: str) -> dict[str, Any]:
    try:
        signed = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise EvidenceError(f"{path}: unreadable ({error})") from error
    return verified_record(signed, anchor, time_field, str(path))


def pruned_record(directory: Path, anchor: TrustAnchor) -> dict[str, Any] | None:
    """The verified record of pruned bundles in DIRECTORY, or None if there is none.
    Raises EvidenceError if it is there but does not verify."""
    path = directory / PRUNED
    if not path.is_file():
        return None
    return read_signed(path, anchor, "at")


def bundle_dirs(directory: Path) -> list[Path]:
    """The bundles of a series directory, oldest first (ids sort in time order); a
    dot-name is a run's staging directory, never a bundle."""
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.iterdir()
        if not p.name.startswith(".")
        and p.is_dir()
        and ((p / "manifest.json").is_file() or (p / "run.json").is_file())
    )


def manifest_digest(bundle: Path) -> str | None:
    path = bundle / "manifest.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def signed_time(bundle: Path, anchor: TrustAnchor) -> datetime.datetime | None:
    """When BUNDLE was signed, from its signed manifest - None unless the signature
    verifies and ANCHOR trusts its key (run.json's `finished` is never used: editing
    it changes no signature)."""
    check = _verify_signature(bundle, anchor)
    if check.problems or check.signed_at is None:
        return None
    return check.signed_at


# --- series heads ----------------------------------------------------------------------
#
# A series' chain proves the order of what is there, not that nothing came after: the
# newest bundles could be removed without a trace. The series head - like Certificate
# Transparency's signed tree head - is kept outside the evidence directory by whoever
# writes the series (the scheduler in its state directory, a controller run under
# ~/.local/state) and replaced atomically after each bundle: the series, its newest
# bundle's id and manifest hash, how many bundles it has had, the signed time, signed
# with the evidence key. `compliance verify --head FILE` finds any newest run missing.

HEAD_FORMAT = "securecore-evidence-head/1"


def default_head(directory: Path) -> Path:
    """Where a controller run keeps DIRECTORY's series head: the user's state directory,
    one file per evidence directory."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    resolved = directory.resolve()
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return Path(state) / "securecore-compliance" / "heads" / f"{resolved.name}-{tag}.json"


def read_head(path: Path, anchor: TrustAnchor) -> dict[str, Any]:
    head = read_signed(path, anchor, "signed_at")
    if (
        head.get("format") != HEAD_FORMAT
        or not isinstance(head.get("newest"), dict)
        or not isinstance(head.get("count"), int)
    ):
        raise EvidenceError(f"{path}: not a series head ({HEAD_FORMAT})")
    return head


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    staging = path.with_name(f".{path.name}.partial")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    staging.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


@dataclass
class SeriesStart:
    """What a new bundle of a series follows, per its head."""

    previous: dict[str, str] | None
    count: int  # bundles the series has had before the new one
    warning: str | None = None


def series_start(
    directory: Path, head: Path, key: SigningKey, new_head: bool = False
) -> SeriesStart:
    """Where the next bundle of DIRECTORY chains on: the newest bundle the head names
    (or one made after it). If that bundle is gone, the new one still names it, so the
    gap stays in the signed chain and every later verification finds it."""
    own = TrustAnchor.of(key.public_key())
    present = bundle_dirs(directory)
    pruned = pruned_record(directory, own)
    if not head.is_file():
        if present and not new_head:
            raise EvidenceError(
                f"{head}: no series head, but {directory} holds {len(present)} bundles; "
                "verify the series, then start a head from its newest bundle with --new-head"
            )
        return SeriesStart(
            previous_bundle(directory), len(present) + (pruned or {}).get("count", 0)
        )
    record = read_head(head, own)
    named = record["newest"]
    ids = [p.name for p in present]
    if named.get("id") in ids and manifest_digest(directory / named["id"]) == named.get(
        "manifest_sha256"
    ):
        after = len(ids) - ids.index(named["id"]) - 1  # made after the head was last written
        return SeriesStart(previous_bundle(directory), record["count"] + after)
    return SeriesStart(
        {"id": named["id"], "manifest_sha256": named["manifest_sha256"]},
        record["count"],
        f"the series head {head} names {named['id']} as the newest bundle, but it is not in "
        f"{directory} (removed or replaced); the new bundle follows it, so the gap stays "
        "in the chain",
    )


def write_head(
    head: Path, key: SigningKey, bundle: Path, count: int, now: datetime.datetime | None = None
) -> None:
    record = {
        "format": HEAD_FORMAT,
        "series": bundle.parent.name,
        "newest": {"id": bundle.name, "manifest_sha256": manifest_digest(bundle)},
        "count": count,
        "signed_at": (now or datetime.datetime.now(datetime.UTC)).isoformat(),
    }
    _write_atomically(head, signed_record(record, key))


# --- verifying -------------------------------------------------------------------------


@dataclass
class BundleCheck:
    bundle: str
    problems: list[str] = field(default_factory=list)
    key_id: str | None = None
    signed_at: datetime.datetime | None = None
    manifest_sha256: str | None = None  # of the manifest whose signature was checked


def _verify_signature(path: Path, anchor: TrustAnchor) -> BundleCheck:
    check = BundleCheck(path.name)
    try:
        manifest_bytes = (path / "manifest.json").read_bytes()
        check.manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
        manifest = json.loads(manifest_bytes)
        signature = json.loads((path / "signature.json").read_bytes())
        public = load_public_key(signature["public_key"].encode(), "signature.json")
        check.key_id = key_id(public)
        public.verify(
            base64.b64decode(signature["signature"]), manifest_bytes, ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        check.problems.append(
            "the signature does not verify: manifest.json was changed or signed by another key"
        )
        return check
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EvidenceError) as error:
        check.problems.append(f"manifest or signature unreadable ({error})")
        return check
    if not isinstance(manifest, dict):
        check.problems.append("manifest.json: not a JSON object")
        return check
    if manifest.get("id") != path.name:
        check.problems.append(
            f"the manifest is of bundle {manifest.get('id')!r}, not of {path.name} (renamed)"
        )
    problem = anchor.problem(public, manifest.get("signed_at"))
    if problem:
        check.problems.append(problem)
    elif manifest.get("signed_at") is not None:
        try:
            check.signed_at = _moment(manifest["signed_at"], "signed_at")
        except EvidenceError as error:
            check.problems.append(str(error))
    return check


def _verify_one(path: Path, anchor: TrustAnchor) -> BundleCheck:
    check = _verify_signature(path, anchor)
    try:
        manifest = json.loads((path / "manifest.json").read_bytes())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return check  # said already
    if not isinstance(files, dict):
        check.problems.append("manifest.json: not a list of files (name -> SHA-256, size)")
        return check
    for name, expected in sorted(files.items()):
        member = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            # Never read: a crafted manifest could name any file of the machine.
            check.problems.append(f"{name}: outside the bundle (a crafted manifest)")
        elif not isinstance(expected, dict) or not isinstance(expected.get("sha256"), str):
            check.problems.append(f"{name}: no SHA-256 in the manifest")
        elif not member.is_file():
            check.problems.append(f"{name}: missing")
        elif hashlib.sha256(member.read_bytes()).hexdigest() != expected["sha256"]:
            check.problems.append(f"{name}: changed (its SHA-256 differs from the manifest's)")
    listed = set(files) | {"manifest.json", "signature.json"}
    for member in sorted(p for p in path.rglob("*") if p.is_file()):
        if str(member.relative_to(path)) not in listed:
            check.problems.append(f"{member.relative_to(path)}: not in the manifest (added)")
    return check


def _chain_start(
    directory: Path, first: str, named: dict[str, str], record: dict[str, Any] | None
) -> list[str]:
    """Problems with the first bundle naming a predecessor that is not here: none when a
    signed record says the retention removed exactly the bundles up to that one."""
    if (
        record is not None
        and record["pruned_through"]["id"] == named["id"]
        and record["pruned_through"]["manifest_sha256"] == named["manifest_sha256"]
    ):
        return []
    return [
        f"{first}: follows {named['id']}, which is not here "
        "(the series starts later, or earlier bundles were removed)"
    ]


def _chain(bundles: list[Path], record: dict[str, Any] | None, directory: Path) -> list[str]:
    chain: list[str] = []
    previous: Path | None = None
    for path in bundles:
        try:
            named = json.loads((path / "run.json").read_text()).get("previous")
        except (OSError, ValueError, AttributeError):
            chain.append(f"{path.name}: run.json unreadable, its place in the chain unknown")
            previous = path
            continue
        if named is not None and not (
            isinstance(named, dict)
            and isinstance(named.get("id"), str)
            and isinstance(named.get("manifest_sha256"), str)
        ):
            chain.append(
                f"{path.name}: run.json names its predecessor unreadably ({named!r}), its "
                "place in the chain unknown"
            )
            previous = path
            continue
        if previous is None:
            if named is not None:
                chain += _chain_start(directory, path.name, named, record)
        elif named is None:
            chain.append(f"{path.name}: names no predecessor, but {previous.name} is before it")
        elif named["id"] != previous.name:
            chain.append(
                f"{path.name}: follows {named['id']}, but the bundle before it "
                f"is {previous.name} (a bundle was removed or inserted)"
            )
        elif named["manifest_sha256"] != manifest_digest(previous):
            chain.append(
                f"{path.name}: {previous.name}'s manifest is not the one it "
                "followed (that bundle was replaced)"
            )
        previous = path
    return chain


def _unpacked(archive_path: Path, into: Path) -> Path:
    try:
        with tarfile.open(archive_path, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                name = member.name
                if not member.isfile() or name.startswith("/") or ".." in Path(name).parts:
                    raise EvidenceError(f"{archive_path}: unexpected member {name!r}")
            for member in members:  # only regular files, written by us: no links, no modes
                source = tar.extractfile(member)
                path = into / member.name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(source.read() if source else b"")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise EvidenceError(f"{archive_path}: not a readable bundle archive ({error})") from error
    roots = {Path(m.name).parts[0] for m in members}
    if len(roots) != 1:
        raise EvidenceError(f"{archive_path}: an archive holds one bundle directory")
    return into / roots.pop()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _check_archive(path: Path, bundle: Path) -> list[str]:
    """An archive beside its bundle holds exactly the bundle's files (which are verified
    themselves): anything else in it is a problem."""
    with tempfile.TemporaryDirectory(prefix="compliance-verify-") as scratch:
        try:
            unpacked = _unpacked(path, Path(scratch))
        except EvidenceError as error:
            return [str(error).replace(str(path), path.name)]
        if unpacked.name != bundle.name:
            return [f"{path.name}: holds bundle {unpacked.name}, not {bundle.name}"]
        packed, here = _files(unpacked), _files(bundle)
    differ = sorted(n for n in packed.keys() | here.keys() if packed.get(n) != here.get(n))
    return [f"{path.name}: differs from its bundle in {', '.join(differ)}"] if differ else []


@dataclass
class Verification:
    checks: list[BundleCheck]
    chain: list[str] = field(default_factory=list)  # breaks in the chain
    series: list[str] = field(default_factory=list)  # archives, stray files, retention record
    head: list[str] = field(default_factory=list)  # against the series head
    unverified: bool = False  # the embedded keys were trusted: proves nothing

    @property
    def problems(self) -> list[str]:
        return [p for c in self.checks for p in c.problems] + self.chain + self.series + self.head


def check_head(
    path: Path, anchor: TrustAnchor, bundles: list[Path], record: dict[str, Any] | None
) -> list[str]:
    """What the series head at PATH shows of the series BUNDLES (oldest first) and its
    retention RECORD: a newest run removed, a bundle replaced, a count that differs."""
    try:
        head = read_head(path, anchor)
    except EvidenceError as error:
        return [str(error)]
    named, count = head["newest"], head["count"]
    ids = [b.name for b in bundles]
    if named.get("id") not in ids:
        newest = ids[-1] if ids else "none"
        return [
            f"the series head (signed {head.get('signed_at')}) names {named.get('id')} as "
            f"the newest of {count} bundles, but {named.get('id')} is not here (the newest "
            f"here is {newest}): the newest runs were removed"
        ]
    if manifest_digest(bundles[ids.index(named["id"])]) != named.get("manifest_sha256"):
        return [
            f"{named['id']}: not the bundle the series head names (its manifest differs: replaced)"
        ]
    pruned = (record or {}).get("count", 0)
    here = ids.index(named["id"]) + 1
    if here + pruned != count:
        return [
            f"the series head counts {count} bundles through {named['id']}; here are "
            f"{here} (+{pruned} removed by retention)"
        ]
    return []


def verify_bundles(target: Path, anchor: TrustAnchor, head: Path | None = None) -> Verification:
    """Every bundle under TARGET (a bundle, its archive or a series directory) checked
    against ANCHOR; for a series also the chain, its archives, anything else in it and,
    given HEAD, the series head: a newest run removed is found."""
    if target.is_file() and target.name.endswith(".tar.gz"):
        if head is not None:
            raise EvidenceError("--head checks a series directory, not one archive")
        with tempfile.TemporaryDirectory(prefix="compliance-verify-") as scratch:
            unpacked = _unpacked(target, Path(scratch))
            return Verification([_verify_one(unpacked, anchor)], unverified=anchor.embedded)
    if not target.is_dir():
        raise EvidenceError(f"{target}: neither a bundle nor a directory of bundles")
    if (target / "manifest.json").is_file():
        if head is not None:
            raise EvidenceError("--head checks a series directory, not one bundle")
        return Verification([_verify_one(target, anchor)], unverified=anchor.embedded)
    bundles = bundle_dirs(target)
    if not bundles and head is not None and target.is_dir():
        # Everything removed: the head still names the newest run (never an empty pass).
        return Verification([], head=check_head(head, anchor, [], None), unverified=anchor.embedded)
    if not bundles:
        raise EvidenceError(
            f"{target}: no evidence bundles in it - nothing to verify "
            "(an empty series proves nothing)"
        )
    outcome = Verification(
        [_verify_one(path, anchor) for path in bundles], unverified=anchor.embedded
    )
    record = None
    try:
        record = pruned_record(target, anchor)
    except EvidenceError as error:
        outcome.series.append(str(error))
    outcome.chain = _chain(bundles, record, target)
    names = {b.name for b in bundles}
    for entry in sorted(target.iterdir()):
        if entry.name in names or entry.name == PRUNED:
            continue
        stem = entry.name.removesuffix(".tar.gz")
        if entry.is_file() and entry.name.endswith(".tar.gz") and stem in names:
            outcome.series += _check_archive(entry, target / stem)
        elif entry.name.endswith(".tar.gz"):
            outcome.series.append(
                f"{entry.name}: an archive, but there is no bundle {stem} "
                "here (not an archive of this series)"
            )
        else:
            outcome.series.append(
                f"{entry.name}: not part of an evidence series (unknown "
                "file; an interrupted run's leftovers are removed by hand)"
            )
    if head is not None:
        outcome.head = check_head(head, anchor, bundles, record)
    return outcome


def hash_files(paths: list[Path]) -> str:
    """One SHA-256 over files (names and contents), for run.json."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
