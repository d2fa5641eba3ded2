"""Import a role's plugin or module file in tests (roles are not Python packages)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load(role: str, folder: str, name: str) -> ModuleType:
    """Load roles/ROLE/FOLDER/NAME.py as a module."""
    path = ROOT / "roles" / role / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{role}_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
