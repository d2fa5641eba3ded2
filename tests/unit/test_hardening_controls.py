"""roles/hardening's control map (hardening_controls in vars/main.yml) is the one source of
each control's CIS, ISO 27001 and SOC 2 ids: the README's table is written from it, each
control's task block carries its ids in its name and tags, the templates' headers cite them
from it and no other file of the role spells them, the compliance checks name real controls
in their remediations, and every framework id is one the catalogs know."""

from __future__ import annotations

import importlib.util
import re
from itertools import takewhile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "hardening"


def _script() -> Any:
    spec = importlib.util.spec_from_file_location(
        "hardening_controls", ROOT / "scripts" / "hardening_controls.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONTROLS: dict[str, dict[str, Any]] = yaml.safe_load((ROLE / "vars/main.yml").read_text())[
    "hardening_controls"
]


def _control_blocks() -> dict[str, dict[str, Any]]:
    """The top-level task blocks named `Hardening | ID | ...`, by control id."""
    blocks: dict[str, dict[str, Any]] = {}
    for path in sorted((ROLE / "tasks").glob("*.yml")):
        for task in yaml.safe_load(path.read_text()) or []:
            parts = [part.strip() for part in task.get("name", "").split("|")]
            if len(parts) > 2 and parts[0] == "Hardening" and parts[1] in CONTROLS:
                assert parts[1] not in blocks, f"two blocks for {parts[1]}"
                blocks[parts[1]] = task
    return blocks


def _components(cis_id: str) -> list[tuple[str, ...]]:
    """The ends of a CIS id or range, as tuples of components."""
    return [tuple(end.split(".")) for end in cis_id.split("-")]


def test_the_readme_table_is_written_from_the_map() -> None:
    script = _script()
    readme = (ROLE / "README.md").read_text()
    assert readme == script.render(readme, script.controls()), (
        "roles/hardening/README.md is stale: run scripts/hardening_controls.py"
    )
    assert script.main(["--check"]) == 0


def test_every_control_has_one_block_named_and_tagged_with_its_ids() -> None:
    blocks = _control_blocks()
    assert sorted(blocks) == sorted(CONTROLS)
    for control_id, control in CONTROLS.items():
        task = blocks[control_id]
        name = [part.strip() for part in task["name"].split("|")]
        # A control beyond the benchmark has no CIS ids: "CIS -", and no cis_ tag.
        assert name[2:5] == [
            "CIS " + (" ".join(control["cis"]) or "-"),
            "ISO " + " ".join(control["iso"]),
            "SOC2 " + " ".join(control["soc2"]),
        ], control_id
        tags = set(task["tags"])
        assert {"hardening", f"hardening_{control_id}"} <= tags, control_id
        assert {tag for tag in tags if tag.startswith("iso_")} == {
            "iso_" + iso.lower() for iso in control["iso"]
        }, control_id
        assert {tag for tag in tags if tag.startswith("soc2_")} == {
            "soc2_" + soc2.lower() for soc2 in control["soc2"]
        }, control_id
        # A CIS tag names a section: a prefix of an id the control lists, and every id
        # the control lists is under one of its tags.
        sections = [tuple(tag[4:].split(".")) for tag in tags if tag.startswith("cis_")]
        if not control["cis"]:
            assert not sections, control_id
        ends = [end for cis_id in control["cis"] for end in _components(cis_id)]
        for section in sections:
            assert any(end[: len(section)] == section for end in ends), (control_id, section)
        for cis_id in control["cis"]:
            assert any(
                end[: len(section)] == section
                for end in _components(cis_id)
                for section in sections
            ), (control_id, cis_id)


# A framework id written out: a CIS section number on a line that names CIS, an
# ISO/IEC 27001 Annex A id, a SOC 2 criterion. Tags (cis_5.1, iso_a.8.5) are lower case.
HAND_WRITTEN_ID = re.compile(r"CIS\b[^\n]*?\b\d+\.\d+|\bA\.\d+\.\d+|\bCC\d+\.\d+")
JINJA_EXPRESSION = re.compile(r"\{\{.*?\}\}")
# pam-auth-update reads its profiles field by field: they carry no comment header.
WITHOUT_HEADER = {"pam-pwhistory.j2"}


def _templates_by_control() -> dict[str, str]:
    """The control id whose block deploys each template of the role, by template."""
    found: dict[str, str] = {}

    def walk(node: Any, control_id: str) -> None:
        if isinstance(node, dict):
            if "ansible.builtin.template" in node:
                found[node["ansible.builtin.template"]["src"]] = control_id
            for value in node.values():
                walk(value, control_id)
        elif isinstance(node, list):
            for item in node:
                walk(item, control_id)

    for control_id, task in _control_blocks().items():
        walk(task, control_id)
    return found


def test_no_other_file_of_the_role_spells_framework_ids() -> None:
    """Framework ids appear in the map and the control blocks' names (checked above)
    only: templates cite them from the map, the defaults name controls by their id."""
    names = [task["name"] for task in _control_blocks().values()]
    for path in sorted(ROLE.rglob("*")):
        relative = path.relative_to(ROLE).as_posix()
        # The README's table is written from the map (first test).
        if not path.is_file() or relative in ("vars/main.yml", "README.md"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(name in line for name in names):
                continue
            found = HAND_WRITTEN_ID.search(JINJA_EXPRESSION.sub("", line))
            assert found is None, f"{relative}:{number}: {line.strip()!r}: cite the map instead"


def test_each_template_header_cites_its_control_from_the_map() -> None:
    """A rendered file's header names the ids of the control that deploys it, as the
    map has them (Ansible renders with trim_blocks, as here)."""
    import jinja2

    templated = _templates_by_control()
    deployed = {path.name for path in (ROLE / "templates").glob("*.j2")} - {"controls.j2"}
    assert set(templated) == deployed
    environment = jinja2.Environment(  # noqa: S701 - configuration files, not HTML
        loader=jinja2.FileSystemLoader(ROLE / "templates"),
        trim_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.ChainableUndefined,
    )
    variables = {
        **yaml.safe_load((ROLE / "defaults/main.yml").read_text()),
        **yaml.safe_load((ROLE / "vars/main.yml").read_text()),
        "ansible_managed": "managed",
    }
    for src, control_id in sorted(templated.items()):
        if src in WITHOUT_HEADER:
            continue
        rendered = environment.get_template(src).render(variables).splitlines()
        header = [
            line.lstrip("# ") for line in takewhile(lambda line: line.startswith("#"), rendered)
        ]
        control = CONTROLS[control_id]
        cited = (
            f"Controls: CIS Debian 12 {', '.join(control['cis'])};"
            f" ISO/IEC 27001:2022 {', '.join(control['iso'])};"
            f" SOC 2 {', '.join(control['soc2'])}."
        )
        assert cited in header, (src, control_id, header)


def test_the_compliance_checks_name_real_controls() -> None:
    checks = yaml.safe_load((ROOT / "compliance/checks/host.yaml").read_text())
    named = 0
    for check in checks:
        for group in re.findall(r"roles/hardening \(([^)]*)\)", check["remediation"]):
            for control_id in (part.strip() for part in group.split(",")):
                assert control_id in CONTROLS, (check["id"], control_id)
                named += 1
    assert named >= 10


def test_every_framework_id_is_in_its_catalog() -> None:
    catalogs = ROOT / "compliance" / "catalogs"
    known = {
        key: {entry["id"] for entry in yaml.safe_load((catalogs / name).read_text())["controls"]}
        for key, name in (("iso", "iso27001-2022.yaml"), ("soc2", "soc2-tsc.yaml"))
    }
    for control_id, control in CONTROLS.items():
        for key, ids in known.items():
            assert set(control[key]) <= ids, (control_id, key, set(control[key]) - ids)
