"""What the scheduler adds to a checklist run: retention, missed runs, alerts, metrics.

The scheduler (roles/compliance_scheduler) keeps one evidence directory per
checklist: EVIDENCE_ROOT/daily, /weekly, /monthly - each its own chain.

- Retention: bundles signed longer ago than the retention period are removed,
  never the newest; the time is the one in the signed manifest. So that the
  chain still verifies, the removal is recorded in a signed PRUNED.json: the
  id and manifest hash of the last bundle removed, which the oldest remaining
  bundle names as its predecessor. A bundle removed any other way is still
  found by `compliance verify`, a newest one with `--head`.
- Missed runs: a checklist whose newest bundle is older than its period plus
  a grace time (or that has none, once the schedule has been installed that
  long) has missed a run.
- Alerts: a failed or errored run and a missed run are each written to the
  log (stderr at error priority, for the journal), to a Prometheus textfile
  (node_exporter's textfile collector) and, if configured, POSTed to a
  webhook as JSON. Alerts say which checklist, what status, how many items
  failed and which bundle; never facts, details or secrets.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compliance.evidence import (
    PRUNED,
    EvidenceError,
    SigningKey,
    TrustAnchor,
    bundle_dirs,
    manifest_digest,
    pruned_record,
    signed_record,
    signed_time,
)

# How long after its period a checklist's newest bundle may be before a run counts
# as missed: a run may start late (Persistent= catch-up after a reboot) and take a while.
PERIODS = {
    "daily": datetime.timedelta(days=1),
    "weekly": datetime.timedelta(days=7),
    "monthly": datetime.timedelta(days=31),
}
GRACE = datetime.timedelta(hours=6)
WEBHOOK_TIMEOUT_SECONDS = 10


def _own_anchor(key: SigningKey, trusted: TrustAnchor | None) -> TrustAnchor:
    """The signing key, and the keys an operator trusts besides (a rotated-out key whose
    old bundles must still age out)."""
    own = TrustAnchor.of(key.public_key())
    return TrustAnchor(own.keys + (trusted.keys if trusted else ()))


# --- retention -------------------------------------------------------------------------


def prune(
    directory: Path,
    keep_days: int,
    key: SigningKey,
    now: datetime.datetime | None = None,
    trusted: TrustAnchor | None = None,
) -> list[str]:
    """Remove the oldest bundles signed more than KEEP_DAYS ago (never the newest); their
    ids. Only the time inside a bundle's signed manifest counts (run.json's `finished`
    is not signed), and only while the bundles are the series' oldest in a row: a bundle
    whose signature or time cannot be verified stops the pruning, so the chain always
    runs from the signed PRUNED.json record to the newest bundle."""
    if keep_days < 1:
        raise EvidenceError(f"--keep-days {keep_days}: keep at least one day of evidence")
    now = now or datetime.datetime.now(datetime.UTC)
    cutoff = now - datetime.timedelta(days=keep_days)
    anchor = _own_anchor(key, trusted)
    old: list[tuple[Path, datetime.datetime]] = []
    for bundle in bundle_dirs(directory)[:-1]:
        signed = signed_time(bundle, anchor)
        if signed is None or signed >= cutoff:
            break
        old.append((bundle, signed))
    if not old:
        return []
    last, last_signed = old[-1]
    previous = pruned_record(directory, anchor)
    record = {
        "format": "securecore-evidence-pruned/1",
        "pruned_through": {
            "id": last.name,
            "signed_at": last_signed.isoformat(),
            "manifest_sha256": manifest_digest(last),
        },
        "count": len(old) + (previous or {}).get("count", 0),
        "keep_days": keep_days,
        "at": now.isoformat(),
    }
    # The record is written before anything is removed: an interrupted pruning
    # leaves bundles that are simply removed again next time.
    target = directory / PRUNED
    staging = directory / f".{PRUNED}.partial"
    staging.write_bytes(signed_record(record, key))
    staging.replace(target)
    for bundle, _ in old:
        shutil.rmtree(bundle)
        archive = bundle.with_name(bundle.name + ".tar.gz")
        archive.unlink(missing_ok=True)
    return [b.name for b, _ in old]


# --- missed runs -----------------------------------------------------------------------


def _manifest_time(bundle: Path) -> datetime.datetime:
    try:
        return datetime.datetime.fromisoformat(
            json.loads((bundle / "manifest.json").read_text())["signed_at"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)


@dataclass
class ScheduleState:
    checklist: str
    newest: str | None  # bundle id
    newest_finished: datetime.datetime | None
    missed: bool
    detail: str


def schedule_state(
    evidence_root: Path,
    checklist: str,
    installed: datetime.datetime,
    now: datetime.datetime | None = None,
) -> ScheduleState:
    now = now or datetime.datetime.now(datetime.UTC)
    due = PERIODS[checklist] + GRACE
    bundles = bundle_dirs(evidence_root / checklist)
    if not bundles:
        missed = now - installed > due
        detail = (
            f"no {checklist} run since the schedule was installed "
            f"({installed.isoformat(timespec='seconds')})"
        )
        return ScheduleState(checklist, None, None, missed, detail)
    newest = bundles[-1]
    # The signed time, read from the manifest without judging the key (the status check
    # verifies the series against its anchor separately); unsigned: as old as can be.
    finished = _manifest_time(newest)
    age = now - finished
    missed = age > due
    hours = round(age.total_seconds() / 3600, 1)
    detail = f"newest {checklist} bundle {newest.name} is {hours} h old"
    if missed:
        detail += f" (a run is due every {PERIODS[checklist].days} d, {GRACE} grace)"
    return ScheduleState(checklist, newest.name, finished, missed, detail)


# --- alerts and metrics ------------------------------------------------------------------


def log_alert(message: str) -> None:
    # "<3>" is the error priority when stderr goes to the journal (SyslogLevelPrefix).
    print(f"<3>compliance alert: {message}", file=sys.stderr)


def post_webhook(url: str, payload: dict[str, Any]) -> str | None:
    """POST PAYLOAD as JSON; None when delivered, else why not (never raises)."""
    if not url.startswith(("https://", "http://")):
        return f"webhook {url!r}: not an http(s) URL"
    # The scheme is checked above: only http(s) is ever opened.
    request = urllib.request.Request(  # noqa: S310
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as answer:  # noqa: S310
            if answer.status >= 300:
                return f"webhook answered {answer.status}"
    except (urllib.error.URLError, OSError) as error:
        return f"webhook not delivered ({getattr(error, 'reason', error)})"
    return None


def write_metrics(path: Path, lines: dict[str, float]) -> None:
    """Merge LINES (`name{labels}` -> value) into the textfile at PATH, atomically."""
    current: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                current[name] = value
    current.update({name: f"{value:g}" for name, value in lines.items()})
    header = [
        "# HELP securecore_compliance_last_run_timestamp_seconds When a checklist last ran.",
        "# TYPE securecore_compliance_last_run_timestamp_seconds gauge",
        "# HELP securecore_compliance_last_run_status 0 passed, 1 failures or pending, 2 errors.",
        "# TYPE securecore_compliance_last_run_status gauge",
        "# HELP securecore_compliance_run_missed 1 when a checklist's scheduled run is missing.",
        "# TYPE securecore_compliance_run_missed gauge",
        "# HELP securecore_compliance_evidence_broken 1 when a series does not verify "
        "against its key and head.",
        "# TYPE securecore_compliance_evidence_broken gauge",
    ]
    body = "\n".join(header + [f"{n} {v}" for n, v in sorted(current.items())]) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    # The textfile directory has other writers (roles/monitoring's relays, as root): a
    # new staging name created exclusively, never one another writer could have placed
    # a file or link at.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    staging = Path(name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(body)
        os.chmod(staging, 0o644)  # node_exporter runs as its own user  # noqa: PTH101
        staging.replace(path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
