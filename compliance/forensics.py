"""Forensic evidence of an incident (REQ-IR-6): what each host was doing, signed.

`compliance forensics` gathers, read-only, with compliance/gather/forensic_facts.py
(processes and their executables' hashes, sockets, logged-in users, recent journal
and authentication logs, the AIDE report, packages and what dpkg finds changed in
them, the firewall ruleset, the service's facts) from the hosts an incident names,
and writes them as an evidence bundle of the kind `forensic`. It is signed with the
evidence key and chained to the incident's earlier forensic bundles: one series per
incident, EVIDENCE_ROOT/incidents/INC/. `compliance verify` checks it like any
bundle. Secrets are masked as in every bundle, and command lines mask the values of
secret-named options on the host already.

  run.json          the incident, who collected, when, the tool, each host's outcome,
                    the previous bundle of the incident (id and manifest SHA-256)
  hosts/HOST.json   what HOST was doing (masked)
"""

from __future__ import annotations

import datetime
import fcntl
import getpass
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from compliance import __version__
from compliance.errors import ComplianceError
from compliance.evidence import (
    BUNDLE_TIME,
    SigningKey,
    _json,
    archive,
    masked,
    previous_bundle,
    write_signed_bundle,
)
from compliance.gather.runner import HostFacts, gather
from securecore.incidents.model import HOST_PATTERN, ID

KIND = "forensic"
FORENSIC_FACTS_SCRIPT = Path(__file__).with_name("gather") / "forensic_facts.py"
HOST_NAME = re.compile(HOST_PATTERN)
COLLECT_SECONDS = 1800


class ForensicsError(ComplianceError):
    """The request is refused (named in the message); nothing was gathered or written."""


@dataclass(frozen=True)
class Collected:
    bundle: Path
    archive: Path
    manifest_sha256: str
    errors: dict[str, str]  # host -> why its facts are missing


def series_directory(evidence_root: Path, incident: str) -> Path:
    """Where INCIDENT's forensic bundles are chained (ForensicsError for a bad id)."""
    if not ID.fullmatch(incident):
        raise ForensicsError(f"incident: {incident!r} is not an incident id (INC-YYYY-NNNN)")
    return evidence_root / "incidents" / incident


def write_forensic_bundle(
    directory: Path,
    incident: str,
    gathered: list[HostFacts],
    signing_key: SigningKey,
    now: datetime.datetime | None = None,
) -> Path:
    """A new signed bundle of GATHERED in DIRECTORY, following its newest bundle."""
    for facts in gathered:
        if not HOST_NAME.fullmatch(facts.host):
            raise ForensicsError(f"host {facts.host!r}: not a name a bundle's file can have")
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    # The hosts' files first: one whose answer cannot be recorded is named in run.json.
    files = {f"hosts/{facts.host}.json": _recordable(facts) for facts in gathered}
    with _chain_lock(directory):
        # Inside the lock: the predecessor and the time that orders this bundle after it.
        now = now or datetime.datetime.now(datetime.UTC)
        run = {
            "kind": KIND,
            "incident": incident,
            "tool": f"compliance {__version__}",
            "by": getpass.getuser(),
            "collected_at": now.isoformat(),
            "hosts": [{"host": f.host, "error": f.error, "seconds": f.seconds} for f in gathered],
            "previous": previous_bundle(directory),
        }
        files["run.json"] = _json(run)
        return write_signed_bundle(
            directory / f"{now.strftime(BUNDLE_TIME)}-{KIND}", files, signing_key, now
        )


@contextmanager
def _chain_lock(directory: Path) -> Iterator[None]:
    """One writer at a time on an incident's chain: two collections at once would both
    name the same predecessor, and the chain would fork. The lock file lies beside the
    series, which holds bundles and their archives only."""
    with directory.with_name(f".{directory.name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _recordable(facts: HostFacts) -> bytes:
    """FACTS as the bundle's file, masked; what a host answered that cannot be recorded
    (nested too deep, not text) becomes that host's error instead of failing the bundle."""
    try:
        return _json(masked(facts.facts))
    except (ValueError, RecursionError, UnicodeError) as error:
        facts.error = f"its answer could not be recorded ({type(error).__name__}: {error})"[:500]
        facts.facts = {}
        return _json({})


def collect(
    inventory: Path,
    incident: str,
    hosts: list[str],
    evidence_root: Path,
    signing_key: SigningKey,
    forks: int = 8,
) -> Collected:
    """HOSTS' forensic facts as INCIDENT's next signed bundle, and its archive."""
    directory = series_directory(evidence_root, incident)
    if not hosts:
        raise ForensicsError("hosts: give the hosts to collect from")
    # The host's own parts are bounded (forensic_facts.PART_SECONDS, ten minutes in all).
    gathered = gather(
        inventory,
        ",".join(hosts),
        forks=forks,
        timeout=COLLECT_SECONDS,
        script=FORENSIC_FACTS_SCRIPT,
    )
    missing = sorted(set(hosts) - {f.host for f in gathered})
    if missing:
        raise ForensicsError(f"hosts: {', '.join(missing)} not in the inventory")
    bundle = write_forensic_bundle(directory, incident, gathered, signing_key)
    return Collected(
        bundle,
        archive(bundle),
        hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest(),
        {f.host: f.error for f in gathered if f.error},
    )
