"""The daily, weekly and monthly checklists (REQ-COMP-8 to REQ-COMP-12).

Each checklist is YAML in `compliance/checklists/`: its schedule (a systemd
OnCalendar expression, at the report times of REQ-COMP-12), the sections of its
report, and its items. An item is done by checks (the machine), by an
attestation (a person: who, when, what), or by both; an attestation names
the controls the person's work supports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compliance.catalog import Catalog, CatalogError, load_yaml, mapped_controls
from compliance.checks import Check
from compliance.report_sections import BUILDERS as SECTION_BUILDERS

CHECKLIST_DIR = Path(__file__).parent / "checklists"
NAMES = ("daily", "weekly", "monthly")


@dataclass(frozen=True)
class Item:
    id: str
    title: str
    source: str
    checks: tuple[str, ...]
    attested_controls: dict[str, tuple[str, ...]] | None  # None: no attestation needed


@dataclass(frozen=True)
class Checklist:
    name: str
    title: str
    schedule: str
    report_sections: tuple[str, ...]
    items: tuple[Item, ...]


def load_checklist(
    name: str, catalogs: dict[str, Catalog], checks: list[Check], directory: Path = CHECKLIST_DIR
) -> Checklist:
    if name not in NAMES:
        raise CatalogError(f"no checklist {name!r}: one of {', '.join(NAMES)}")
    path = directory / f"{name}.yaml"
    data = load_yaml(path, "checklist")
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise CatalogError(f"{path}: a checklist is a mapping with a list of items")
    known = {check.id for check in checks}
    items, seen = [], set()
    for index, raw in enumerate(data["items"]):
        where = f"{path}: items[{index}]"
        if not isinstance(raw, dict) or not all(
            isinstance(raw.get(k), str) for k in ("id", "title", "source")
        ):
            raise CatalogError(f"{where}: id, title and source are required")
        where = f"{where} ({raw['id']})"
        if raw["id"] in seen:
            raise CatalogError(f"{where}: appears twice")
        seen.add(raw["id"])
        listed = raw.get("checks", [])
        unknown = [c for c in listed if c not in known]
        if unknown:
            raise CatalogError(f"{where}: no check {', '.join(unknown)}")
        attestation = raw.get("attestation")
        if not listed and attestation is None:
            raise CatalogError(f"{where}: checks, an attestation, or both")
        attested = (
            mapped_controls((attestation or {}).get("controls"), f"{where}: attestation", catalogs)
            if attestation is not None
            else None
        )
        items.append(Item(raw["id"], raw["title"], raw["source"], tuple(listed), attested))
    sections = tuple(data.get("report_sections", ()))
    unknown = [s for s in sections if s not in SECTION_BUILDERS]
    if unknown:
        raise CatalogError(
            f"{path}: report_sections: no section {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(SECTION_BUILDERS)})"
        )
    return Checklist(
        name, str(data.get("title", name)), str(data.get("schedule", "")), sections, tuple(items)
    )


def load_checklists(
    catalogs: dict[str, Catalog], checks: list[Check], directory: Path = CHECKLIST_DIR
) -> dict[str, Checklist]:
    return {name: load_checklist(name, catalogs, checks, directory) for name in NAMES}
