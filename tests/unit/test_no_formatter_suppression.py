"""The formatter lays out every Python file: no line or block switches it off.

Data that reads better as a table belongs in a data file, not in a hand-aligned
literal that the formatter is told to leave alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The comments ruff format obeys: fmt skip/off/on and the yapf spellings it also honours.
SUPPRESSION = re.compile(r"#\s*(fmt:\s*(skip|off|on)\b|yapf:\s*(disable|enable)\b)")

# Not the project's sources: virtualenvs, caches, build output, lab state.
SKIPPED_DIRS = {"build", "dist", "output", "node_modules", "__pycache__"}


def python_files() -> list[Path]:
    files = []
    for directory, subdirs, names in os.walk(ROOT):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in SKIPPED_DIRS)
        for name in sorted(names):
            path = Path(directory) / name
            if path.is_symlink() or not path.is_file():
                continue
            if path.suffix == ".py" or (not path.suffix and _python_script(path)):
                files.append(path)
    return files


def _python_script(path: Path) -> bool:
    with path.open("rb") as stream:
        first = stream.readline(200)
    return first.startswith(b"#!") and b"python" in first


def test_the_search_sees_the_sources() -> None:
    found = {path.relative_to(ROOT).as_posix() for path in python_files()}
    assert "securecore/__init__.py" in found
    assert Path(__file__).resolve().relative_to(ROOT).as_posix() in found


def test_no_python_file_switches_the_formatter_off() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in python_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if SUPPRESSION.search(line)
    ]
    assert not offenders, "formatter switched off:\n" + "\n".join(offenders)
