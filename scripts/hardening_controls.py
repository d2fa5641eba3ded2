#!/usr/bin/env python3
"""Write the control table of roles/hardening/README.md from the role's control map.

The map, `hardening_controls` in roles/hardening/vars/main.yml, is the one source of
each control's CIS, ISO/IEC 27001:2022 and SOC 2 ids: the role's tasks report it on
each host (hardening.json), the task names and tags carry it (a unit test checks
them against it), and the README's table is this script's output.

    scripts/hardening_controls.py           rewrite the table
    scripts/hardening_controls.py --check   exit 1 if the README is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROLE = Path(__file__).resolve().parents[1] / "roles" / "hardening"
BEGIN = "<!-- controls: written by scripts/hardening_controls.py from vars/main.yml -->"
END = "<!-- end of controls -->"


def controls() -> dict[str, dict[str, Any]]:
    """The control map, by id, in the role's order."""
    return yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["hardening_controls"]


def table(mapping: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| id | control | CIS | ISO 27001:2022 | SOC 2 | in a container |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for control_id, control in mapping.items():
        cells = [
            f"`{control_id}`",
            control["title"],
            ", ".join(control["cis"]) or "-",  # a control beyond the benchmark
            ", ".join(control["iso"]),
            ", ".join(control["soc2"]),
            control["container"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(readme: str, mapping: dict[str, dict[str, Any]]) -> str:
    """The README with the text between the markers replaced by the table."""
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"{ROLE / 'README.md'}: the markers {BEGIN!r} and {END!r} are missing")
    return f"{head}{BEGIN}\n{table(mapping)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is stale")
    arguments = parser.parse_args(argv)
    path = ROLE / "README.md"
    current = path.read_text()
    wanted = render(current, controls())
    if arguments.check:
        if current != wanted:
            print(f"{path} is stale: run scripts/hardening_controls.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
