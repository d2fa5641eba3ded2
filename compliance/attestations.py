"""Attestations: what only a person can do, recorded - who, when, what, which files.

`compliance attest ITEM --by NAME --note TEXT [--file PATH ...]` writes one
JSON record into the attestation store (a directory; one file per
attestation, never rewritten). Each attached file is recorded by name, size
and SHA-256, so what was shown can be proved later. An attestation counts
for its checklist's period: the UTC day (daily), ISO week (weekly) or month
(monthly) in which it was made; until then the item is pending, never passed.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from compliance.checklists import Checklist


class AttestationError(Exception):
    """An attestation cannot be recorded as asked; nothing was written."""


@dataclass(frozen=True)
class Attestation:
    item: str
    by: str
    note: str
    at: datetime.datetime
    files: tuple[dict, ...]

    def as_dict(self) -> dict:
        return {"item": self.item, "by": self.by, "note": self.note,
                "at": self.at.isoformat(), "files": list(self.files)}  # fmt: skip


def period_of(checklist: str, moment: datetime.datetime) -> str:
    if checklist == "daily":
        return moment.date().isoformat()
    if checklist == "weekly":
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    return moment.strftime("%Y-%m")


def record(
    store: Path, checklists: dict[str, Checklist], item: str, by: str, note: str,
    files: list[Path], now: datetime.datetime | None = None,
) -> Path:  # fmt: skip
    owner = next((c for c in checklists.values() for i in c.items if i.id == item), None)
    if owner is None:
        known = ", ".join(i.id for c in checklists.values() for i in c.items
                          if i.attested_controls is not None)  # fmt: skip
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
        attached.append({"name": path.name, "size": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
    moment = now or datetime.datetime.now(datetime.UTC)
    attestation = Attestation(item, by.strip(), note.strip(), moment, tuple(attached))
    store.mkdir(parents=True, exist_ok=True, mode=0o750)
    path = store / f"{moment.strftime('%Y%m%dT%H%M%S.%fZ')}-{item}.json"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(attestation.as_dict(), handle, indent=2, sort_keys=True)
        handle.write("\n")
    return path


def current(store: Path, checklist: str, item: str,
            now: datetime.datetime | None = None) -> Attestation | None:  # fmt: skip
    """The newest attestation of ITEM made in the current period, if any."""
    moment = now or datetime.datetime.now(datetime.UTC)
    wanted = period_of(checklist, moment)
    found = None
    for path in sorted(store.glob(f"*-{item}.json")) if store.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            at = datetime.datetime.fromisoformat(data["at"])
        except (OSError, ValueError, KeyError):
            continue
        if data.get("item") == item and period_of(checklist, at) == wanted:
            found = Attestation(item, data["by"], data["note"], at, tuple(data.get("files", [])))
    return found
