"""Which control is covered how: by checks, by checklist attestations, or not applicable.

Every control of every catalog must be one of the three; a control that is
none is a gap, and `compliance coverage` exits 1 while one exists. A
control marked not applicable must say why, and must not also be covered
(the statement of applicability would contradict itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from compliance.catalog import Catalog, CatalogError, load_yaml
from compliance.checklists import Checklist
from compliance.checks import Check

APPLICABILITY_FILE = Path(__file__).parent / "applicability.yaml"


@dataclass
class ControlCoverage:
    framework: str
    id: str
    title: str
    theme: str
    checks: list[str] = field(default_factory=list)
    attestations: list[str] = field(default_factory=list)
    not_applicable: str | None = None

    @property
    def status(self) -> str:
        if self.checks:
            return "automated"
        if self.attestations:
            return "attested"
        if self.not_applicable:
            return "not applicable"
        return "gap"


def load_applicability(
    catalogs: dict[str, Catalog], path: Path = APPLICABILITY_FILE
) -> dict[str, dict[str, str]]:
    data = load_yaml(path, "statement of applicability") or {}
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: a mapping of framework to {{control id: reason}}")
    found: dict[str, dict[str, str]] = {}
    for framework, reasons in data.items():
        catalog = catalogs.get(framework)
        if catalog is None:
            raise CatalogError(f"{path}: no framework {framework!r}")
        for control_id, reason in (reasons or {}).items():
            if catalog.get(str(control_id)) is None:
                raise CatalogError(f"{path}: {framework} has no control {control_id}")
            if not isinstance(reason, str) or not reason.strip():
                raise CatalogError(f"{path}: {framework} {control_id}: the reason is required")
            found.setdefault(framework, {})[str(control_id)] = " ".join(reason.split())
    return found


def coverage(
    catalogs: dict[str, Catalog],
    checks: list[Check],
    checklists: dict[str, Checklist],
    applicability: dict[str, dict[str, str]],
) -> dict[str, list[ControlCoverage]]:
    table = {
        framework: {
            c.id: ControlCoverage(framework, c.id, c.title, c.theme) for c in catalog.controls
        }
        for framework, catalog in catalogs.items()
    }
    for check in checks:
        for framework, ids in check.controls.items():
            for control_id in ids:
                table[framework][control_id].checks.append(check.id)
    for checklist in checklists.values():
        for item in checklist.items:
            for framework, ids in (item.attested_controls or {}).items():
                for control_id in ids:
                    table[framework][control_id].attestations.append(item.id)
    for framework, reasons in applicability.items():
        for control_id, reason in reasons.items():
            entry = table[framework][control_id]
            if entry.checks or entry.attestations:
                covered_by = ", ".join(entry.checks + entry.attestations)
                raise CatalogError(
                    f"{framework} {control_id} is marked not applicable but covered by {covered_by}"
                )
            entry.not_applicable = reason
    return {framework: list(entries.values()) for framework, entries in table.items()}
