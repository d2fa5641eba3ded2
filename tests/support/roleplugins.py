"""Import a role's plugin or module file in tests (roles are not Python packages)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load(role: str, folder: str, name: str) -> ModuleType:
    """Load roles/ROLE/FOLDER/NAME.py as a module."""
    path = ROOT / "roles" / role / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{role}_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_module_utils(role: str, *names: str) -> ModuleType:
    """Load roles/ROLE/module_utils/NAME.py as ansible.module_utils.NAME (in order).

    Module utils import each other the way Ansible ships them to a host; this
    registers them under those names. Returns the last one loaded.
    """
    loaded = None
    for name in names:
        path = ROOT / "roles" / role / "module_utils" / f"{name}.py"
        qualified = f"ansible.module_utils.{name}"
        spec = importlib.util.spec_from_file_location(qualified, path)
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = loaded
        spec.loader.exec_module(loaded)
    assert loaded is not None
    return loaded
