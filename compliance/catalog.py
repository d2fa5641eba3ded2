"""Control catalogs: ISO/IEC 27001:2022 Annex A and the SOC 2 Trust Services Criteria.

The catalogs are YAML data in `compliance/catalogs/` (ids, short titles,
themes; no text of the standards). Loading checks them: every control has an
id, a title and a theme, no id appears twice, and the number of controls is
the one the framework has (93 for Annex A), so a control lost in an edit is
an error, not a gap nobody sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from compliance.errors import ComplianceError

CATALOG_DIR = Path(__file__).parent / "catalogs"


class CatalogError(ComplianceError):
    """A catalog file is broken; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Control:
    framework: str
    id: str
    title: str
    theme: str


@dataclass(frozen=True)
class Catalog:
    framework: str
    title: str
    controls: tuple[Control, ...]

    def ids(self) -> list[str]:
        return [c.id for c in self.controls]

    def get(self, control_id: str) -> Control | None:
        return next((c for c in self.controls if c.id == control_id), None)


def load_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CatalogError(f"{path}: cannot read the {what} ({error.strerror})") from error
    except yaml.YAMLError as error:
        raise CatalogError(f"{path}: not valid YAML ({error})") from error


def load_catalog(path: Path) -> Catalog:
    data = load_yaml(path, "catalog")
    if not isinstance(data, dict) or not isinstance(data.get("controls"), list):
        raise CatalogError(f"{path}: a catalog is a mapping with a list of controls")
    framework = data.get("framework")
    if not isinstance(framework, str) or not framework:
        raise CatalogError(f"{path}: framework: required")
    controls, seen = [], set()
    for index, item in enumerate(data["controls"]):
        where = f"{path}: controls[{index}]"
        if not isinstance(item, dict):
            raise CatalogError(f"{where}: a control is a mapping (id, title, theme)")
        missing = [k for k in ("id", "title", "theme") if not isinstance(item.get(k), str)]
        if missing:
            raise CatalogError(f"{where}: {', '.join(missing)}: required (text)")
        if item["id"] in seen:
            raise CatalogError(f"{where}: {item['id']} appears twice")
        seen.add(item["id"])
        controls.append(Control(framework, item["id"], item["title"], item["theme"]))
    expected = data.get("expected_controls")
    if expected is not None and expected != len(controls):
        raise CatalogError(
            f"{path}: {len(controls)} controls, but {framework} has {expected} (expected_controls)"
        )
    return Catalog(framework, str(data.get("title", framework)), tuple(controls))


def load_catalogs(directory: Path = CATALOG_DIR) -> dict[str, Catalog]:
    catalogs = {}
    for path in sorted(directory.glob("*.yaml")):
        catalog = load_catalog(path)
        if catalog.framework in catalogs:
            raise CatalogError(f"{path}: framework {catalog.framework} is defined twice")
        catalogs[catalog.framework] = catalog
    if not catalogs:
        raise CatalogError(f"{directory}: no catalog (*.yaml)")
    return catalogs


def mapped_controls(
    value: Any, where: str, catalogs: dict[str, Catalog]
) -> dict[str, tuple[str, ...]]:
    """{framework: control ids} as a check or an attestation names them, each id known."""
    if not isinstance(value, dict) or not value:
        raise CatalogError(f"{where}: controls: a mapping of framework to control ids")
    mapped = {}
    for framework, ids in value.items():
        catalog = catalogs.get(framework)
        if catalog is None:
            raise CatalogError(f"{where}: controls: no framework {framework!r}")
        unknown = [str(i) for i in ids if catalog.get(str(i)) is None]
        if unknown:
            raise CatalogError(f"{where}: {framework} has no control {', '.join(unknown)}")
        mapped[framework] = tuple(str(i) for i in ids)
    return mapped
