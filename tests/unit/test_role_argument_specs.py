"""Every role documents its options the way Galaxy users expect: meta/argument_specs.yml
names every variable of defaults/main.yml, with the same default wherever the default is a
fixed value; values computed from other options live in vars/main.yml, not in defaults; and
the README has the usual sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(path.name for path in (ROOT / "roles").iterdir() if (path / "meta").is_dir())
README_SECTIONS = ("Requirements", "Role Variables", "Dependencies", "Example Playbook")


def _load(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _dependencies(role: str) -> list[str]:
    """The role's dependencies, nearest first, transitively."""
    found: list[str] = []
    for entry in _load(ROOT / "roles" / role / "meta/main.yml").get("dependencies") or []:
        name = entry["role"] if isinstance(entry, dict) else entry
        for dependency in [name, *_dependencies(name)]:
            if dependency not in found:
                found.append(dependency)
    return found


def _rendered_defaults(role: str) -> dict[str, Any]:
    """The role's defaults with every template that needs nothing but other defaults
    rendered; a value that needs the inventory, facts, lookups or Ansible's own filters
    stays unrendered (it has no fixed default to document)."""
    values: dict[str, Any] = {}
    for name in [*reversed(_dependencies(role)), role]:
        values.update(_load(ROOT / "roles" / name / "defaults/main.yml"))
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 - YAML, not HTML
    rendered = {key: value for key, value in values.items() if "{{" not in str(value)}
    for _ in range(len(values)):
        for key, value in values.items():
            if key in rendered:
                continue
            if not isinstance(value, str):  # a structure with templates inside: computed
                continue
            try:
                names = jinja2.meta.find_undeclared_variables(environment.parse(str(value)))
                if not names <= set(values):  # the inventory, facts or the controller
                    continue
                text = environment.from_string(str(value)).render(rendered)
            except Exception:  # noqa: S112 - not computable from the defaults alone
                continue
            rendered[key] = text
    return rendered


def _options(role: str) -> dict[str, dict[str, Any]]:
    """The options of every entry point (main, and tasks_from ones such as restore)."""
    specs = _load(ROOT / "roles" / role / "meta/argument_specs.yml")
    assert "main" in specs.get("argument_specs", {}), f"{role}: no argument_specs.main"
    options: dict[str, dict[str, Any]] = {}
    for entry in specs["argument_specs"].values():
        options.update(entry.get("options") or {})
    return options


def test_every_role_is_checked() -> None:
    assert {"securecore", "plugin", "compliance_scheduler", "python_release"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_an_option_with_its_default(role: str) -> None:
    defaults = _load(ROOT / "roles" / role / "defaults/main.yml")
    options = _options(role)
    rendered = _rendered_defaults(role)
    assert not sorted(set(defaults) - set(options)), f"{role}: defaults without an option"
    for name, value in defaults.items():
        option = options[name]
        if name not in rendered:
            # Computed from the inventory or the controller: described, no fixed default (a
            # structure with templates inside may show its value with the templates resolved).
            assert "default" not in option or not isinstance(value, str), f"{role}: {name}"
            continue
        assert "default" in option, f"{role}: {name} needs default: {rendered[name]!r}"
        documented, actual = option["default"], rendered[name]
        if option.get("type") in {"int", "bool"} and isinstance(actual, str):
            actual = yaml.safe_load(actual)
        assert documented == actual, f"{role}: {name}"


@pytest.mark.parametrize("role", ROLES)
def test_computed_values_are_not_defaults(role: str) -> None:
    defaults = _load(ROOT / "roles" / role / "defaults/main.yml")
    computed = _load(ROOT / "roles" / role / "vars/main.yml")
    assert not set(defaults) & set(computed), role
    options = _options(role)
    assert not set(computed) & set(options), f"{role}: a computed value documented as an option"


@pytest.mark.parametrize("role", ROLES)
def test_readme_has_the_galaxy_sections(role: str) -> None:
    text = (ROOT / "roles" / role / "README.md").read_text()
    headings = {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("## ")}
    missing = [section for section in README_SECTIONS if section not in headings]
    assert not missing, f"roles/{role}/README.md lacks {missing}"
