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

`archive` also writes BUNDLE.tar.gz (reproducible). `verify_bundles` checks,
offline, every file's hash, the signature (with a public key the auditor
pins, or the bundle's own key whose id it reports), and the chain: each
bundle names its predecessor's manifest hash, so an altered, removed or
inserted bundle in the series is found and named.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from compliance import __version__

FORMAT = "securecore-evidence/1"
SECRET_KEYS = re.compile(r"(pin|password|passphrase|secret|token|private|hmac)", re.IGNORECASE)
MASK = "***"


class EvidenceError(Exception):
    """A bundle cannot be written, or a signing key cannot be used."""


# --- keys ------------------------------------------------------------------------------


def generate_key(path: Path) -> str:
    """A new ECDSA P-256 signing key in PATH (0600, PKCS#8) and PATH.pub; its key id."""
    if path.exists():
        raise EvidenceError(f"{path}: exists; a signing key is never overwritten")
    key = ec.generate_private_key(ec.SECP256R1())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.with_name(path.name + ".pub").write_bytes(public)
    return key_id(key.public_key())


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


def key_id(public: ec.EllipticCurvePublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    return hashlib.sha256(der).hexdigest()


# --- writing ---------------------------------------------------------------------------


def masked(value: Any) -> Any:
    """VALUE with every entry whose name says it is secret replaced by a mask."""
    if isinstance(value, dict):
        return {k: (MASK if SECRET_KEYS.search(str(k)) and v not in (None, [], {}) else masked(v))
                for k, v in value.items()}  # fmt: skip
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
        cases.append(f'  <testcase classname={quoteattr(r["host"])} name={quoteattr(r["check"])}>'
                     f"{body}</testcase>")  # fmt: skip
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name={quoteattr(name)} tests="{len(results)}" failures="{failures}" '
        f'errors="{errors}">\n' + "\n".join(cases) + "\n</testsuite>\n"
    ).encode()


def previous_bundle(directory: Path) -> dict[str, str] | None:
    bundles = sorted(p for p in directory.iterdir() if (p / "manifest.json").is_file()) \
        if directory.is_dir() else []  # fmt: skip
    if not bundles:
        return None
    last = bundles[-1]
    digest = hashlib.sha256((last / "manifest.json").read_bytes()).hexdigest()
    return {"id": last.name, "manifest_sha256": digest}


def write_bundle(
    directory: Path, kind: str, results: list[dict[str, Any]], hosts: list[dict[str, Any]],
    facts: dict[str, Any], run: dict[str, Any], signing_key: ec.EllipticCurvePrivateKey,
    extra: dict[str, bytes] | None = None,
) -> Path:  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    now = datetime.datetime.now(datetime.UTC)
    bundle_id = f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{kind}"
    files: dict[str, bytes] = {
        "run.json": _json({
            "format": FORMAT, "id": bundle_id, "kind": kind, "tool": "compliance",
            "version": __version__, "finished": now.isoformat(),
            "operator": f"{getpass.getuser()}@{socket.gethostname()}",
            "previous": previous_bundle(directory), **run,
        }),
        "results.json": _json({"hosts": hosts, "results": results}),
        "junit.xml": junit(results, f"compliance {kind}"),
        **{f"facts/{escape(host)}.json": _json(masked(found)) for host, found in facts.items()},
        **(extra or {}),
    }  # fmt: skip
    target = directory / bundle_id
    staging = directory / f".{bundle_id}.partial"
    for name, data in files.items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    manifest = _json({"format": FORMAT, "id": bundle_id, "files": {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for name, data in sorted(files.items())}})  # fmt: skip
    (staging / "manifest.json").write_bytes(manifest)
    signature = signing_key.sign(manifest, ec.ECDSA(hashes.SHA256()))
    public = signing_key.public_key()
    (staging / "signature.json").write_bytes(_json({
        "algorithm": "ECDSA-P256-SHA256", "key_id": key_id(public),
        "public_key": public.public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo
                                          ).decode(),
        "signature": base64.b64encode(signature).decode(),
    }))  # fmt: skip
    staging.rename(target)  # a bundle appears whole, or not at all
    return target


def archive(bundle: Path) -> Path:
    """BUNDLE.tar.gz beside the bundle: the same files, in a fixed order and form, so
    the same bundle always makes the same archive."""
    target = bundle.with_name(bundle.name + ".tar.gz")
    with gzip.GzipFile(target, "wb", mtime=0) as compressed, \
            tarfile.open(fileobj=compressed, mode="w") as tar:  # fmt: skip
        for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(f"{bundle.name}/{path.relative_to(bundle)}")
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o640
            tar.addfile(info, io.BytesIO(data))
    return target


def _unpacked(archive_path: Path, into: Path) -> Path:
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
    roots = {Path(m.name).parts[0] for m in members}
    if len(roots) != 1:
        raise EvidenceError(f"{archive_path}: an archive holds one bundle directory")
    return into / roots.pop()


# --- pruned bundles --------------------------------------------------------------------

PRUNED = "PRUNED.json"


def signed_record(record: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> bytes:
    """RECORD as JSON with an ECDSA signature over its canonical form."""
    body = json.dumps(record, sort_keys=True).encode()
    signature = key.sign(body, ec.ECDSA(hashes.SHA256()))
    public = key.public_key()
    return (json.dumps({
        "record": record, "key_id": key_id(public),
        "public_key": public.public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo
                                          ).decode(),
        "signature": base64.b64encode(signature).decode(),
    }, indent=2, sort_keys=True) + "\n").encode()  # fmt: skip


def pruned_record(directory: Path, trusted: ec.EllipticCurvePublicKey | None = None,
                  ) -> dict[str, Any] | None:  # fmt: skip
    """The verified record of pruned bundles in DIRECTORY, or None if there is none.
    Raises EvidenceError if it is there but does not verify."""
    path = directory / PRUNED
    if not path.is_file():
        return None
    try:
        signed = json.loads(path.read_text())
        public = serialization.load_pem_public_key(signed["public_key"].encode())
        if trusted is not None and key_id(trusted) != key_id(public):
            raise EvidenceError(f"{path}: signed by key {key_id(public)[:16]}..., "
                                "not by the trusted key")  # fmt: skip
        body = json.dumps(signed["record"], sort_keys=True).encode()
        public.verify(base64.b64decode(signed["signature"]), body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as error:
        raise EvidenceError(f"{path}: the signature does not verify (changed)") from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EvidenceError(f"{path}: unreadable ({error})") from error
    return signed["record"]


# --- verifying -------------------------------------------------------------------------


@dataclass
class BundleCheck:
    bundle: str
    problems: list[str] = field(default_factory=list)
    key_id: str | None = None


def _verify_one(path: Path, trusted: ec.EllipticCurvePublicKey | None) -> BundleCheck:
    check = BundleCheck(path.name)
    try:
        manifest_bytes = (path / "manifest.json").read_bytes()
        manifest = json.loads(manifest_bytes)
        signature = json.loads((path / "signature.json").read_bytes())
    except (OSError, ValueError) as error:
        check.problems.append(f"manifest or signature unreadable ({error})")
        return check
    for name, expected in sorted(manifest.get("files", {}).items()):
        member = path / name
        if not member.is_file():
            check.problems.append(f"{name}: missing")
        elif hashlib.sha256(member.read_bytes()).hexdigest() != expected["sha256"]:
            check.problems.append(f"{name}: changed (its SHA-256 differs from the manifest's)")
    listed = set(manifest.get("files", {})) | {"manifest.json", "signature.json"}
    for member in sorted(p for p in path.rglob("*") if p.is_file()):
        if str(member.relative_to(path)) not in listed:
            check.problems.append(f"{member.relative_to(path)}: not in the manifest (added)")
    try:
        public = serialization.load_pem_public_key(signature["public_key"].encode())
        check.key_id = key_id(public)
        if trusted is not None and key_id(trusted) != check.key_id:
            check.problems.append(
                f"signed by key {check.key_id[:16]}..., not by the trusted key "
                f"{key_id(trusted)[:16]}..."
            )
        public.verify(base64.b64decode(signature["signature"]), manifest_bytes,
                      ec.ECDSA(hashes.SHA256()))  # fmt: skip
    except InvalidSignature:
        check.problems.append("the signature does not verify: manifest.json was changed "
                              "or signed by another key")  # fmt: skip
    except (KeyError, ValueError, TypeError) as error:
        check.problems.append(f"signature.json unusable ({error})")
    return check


def _chain_start(directory: Path, first: str, named: dict[str, str],
                 trusted: ec.EllipticCurvePublicKey | None) -> list[str]:  # fmt: skip
    """Problems with the first bundle naming a predecessor that is not here: none when a
    signed record says the retention removed exactly the bundles up to that one."""
    try:
        record = pruned_record(directory, trusted)
    except EvidenceError as error:
        return [str(error)]
    if record is not None and record["pruned_through"]["id"] == named["id"] and \
            record["pruned_through"]["manifest_sha256"] == named["manifest_sha256"]:  # fmt: skip
        return []
    return [f"{first}: follows {named['id']}, which is not here "
            "(the series starts later, or earlier bundles were removed)"]  # fmt: skip


def verify_bundles(
    target: Path, trusted_key: Path | None = None
) -> tuple[list[BundleCheck], list[str]]:
    """Every bundle under TARGET (a bundle or a directory of them) checked, and the chain."""
    trusted = None
    if trusted_key is not None:
        try:
            trusted = serialization.load_pem_public_key(trusted_key.read_bytes())
        except (OSError, ValueError) as error:
            raise EvidenceError(f"{trusted_key}: not a PEM public key ({error})") from error
    if target.is_file() and target.name.endswith(".tar.gz"):
        with tempfile.TemporaryDirectory(prefix="compliance-verify-") as scratch:
            unpacked = _unpacked(target, Path(scratch))
            return [_verify_one(unpacked, trusted)], []
    if (target / "manifest.json").is_file():
        bundles = [target]
    elif target.is_dir():
        bundles = sorted(p for p in target.iterdir() if (p / "manifest.json").is_file()
                         or (p / "run.json").is_file())  # fmt: skip
    else:
        raise EvidenceError(f"{target}: neither a bundle nor a directory of bundles")
    checks = [_verify_one(path, trusted) for path in bundles]
    chain: list[str] = []
    if len(bundles) > 1 or not (target / "manifest.json").is_file():
        previous: Path | None = None
        for path in bundles:
            try:
                named = json.loads((path / "run.json").read_text()).get("previous")
            except (OSError, ValueError):
                chain.append(f"{path.name}: run.json unreadable, its place in the chain unknown")
                previous = path
                continue
            if previous is None:
                if named is not None:
                    chain += _chain_start(target, path.name, named, trusted)
            elif named is None:
                chain.append(f"{path.name}: names no predecessor, but {previous.name} is before it")
            else:
                actual = hashlib.sha256((previous / "manifest.json").read_bytes()).hexdigest() \
                    if (previous / "manifest.json").is_file() else None  # fmt: skip
                if named["id"] != previous.name:
                    chain.append(
                        f"{path.name}: follows {named['id']}, but the bundle before it "
                        f"is {previous.name} (a bundle was removed or inserted)"
                    )
                elif named["manifest_sha256"] != actual:
                    chain.append(f"{path.name}: {previous.name}'s manifest is not the one it "
                                 "followed (that bundle was replaced)")  # fmt: skip
            previous = path
    return checks, chain


def hash_files(paths: list[Path]) -> str:
    """One SHA-256 over files (names and contents), for run.json."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
