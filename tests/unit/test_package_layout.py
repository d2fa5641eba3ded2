"""The packages' shape: lazy command lines, one error root per package, one line per error."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import compliance
import securecore
from compliance.errors import ComplianceError
from securecore.errors import SecureCoreError

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("starlette", "uvicorn", "pkcs11", "psycopg", "ansible", "ansible_runner")

# Run a command line in a fresh interpreter and print the top-level modules it imported.
# BLOCKED names cannot be imported there (as on a base install without the scheduler extra).
RUN_AND_LIST = """
import importlib.abc, json, runpy, sys
blocked = set(json.loads(sys.argv[1]))

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is blocked for this test")
        return None

sys.meta_path.insert(0, Blocker())
module, sys.argv = sys.argv[2], [sys.argv[2], *sys.argv[3:]]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as end:
    code = end.code if isinstance(end.code, int) else 1
else:
    code = 0
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})), file=sys.stderr)
sys.exit(code)
"""


def run(module: str, *args: str, blocked: tuple[str, ...] = ()) -> tuple[int, str, str, set]:
    command = [sys.executable, "-c", RUN_AND_LIST, json.dumps(blocked), module, *args]
    proc = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    *messages, modules = proc.stderr.strip().splitlines()
    return proc.returncode, proc.stdout, "\n".join(messages), set(json.loads(modules))


def test_securecore_help_imports_no_server_hsm_or_database_library() -> None:
    code, out, _, modules = run("securecore", "--help")
    assert code == 0 and "emergency-shutdown" in out, out
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_a_command_imports_only_its_own_module() -> None:
    code, out, _, modules = run("securecore", "backup", "--help")
    assert code == 0 and "--keep-days" in out, out
    assert not modules & {"starlette", "uvicorn"}, sorted(modules)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (("coverage", "--format", "json"), (0, 1)),  # 1: a coverage gap is a finding
        (("checks",), (0,)),
        (("checklists",), (0,)),
    ],
)
def test_compliance_reading_works_without_ansible(command: tuple, expected: tuple) -> None:
    code, out, err, modules = run("compliance.cli", *command, blocked=("ansible", "ansible_runner"))
    assert code in expected and out, err
    assert not modules & {"ansible", "ansible_runner"}


def test_compliance_verify_works_without_ansible(tmp_path: Path) -> None:
    # An empty directory: verify runs to its end and says there is nothing to verify.
    code, _, err, _ = run(
        "compliance.cli",
        "verify",
        str(tmp_path),
        "--trust-embedded-key",
        blocked=("ansible", "ansible_runner"),
    )
    nothing = "no evidence bundles in it - nothing to verify (an empty series proves nothing)"
    assert code == 2 and err == f"compliance: {tmp_path}: {nothing}", err


def test_a_known_securecore_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    code, _, err, _ = run("securecore", "audit", "verify", "-c", str(missing))
    assert code == 2, err
    assert err == f"securecore: {missing}: the configuration file does not exist", err


def _error_classes(package) -> list[type]:
    found = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith(".__main__"):
            continue  # runs the command line
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == info.name:
                found.append(value)
    return found


@pytest.mark.parametrize(
    ("package", "root"), [(securecore, SecureCoreError), (compliance, ComplianceError)]
)
def test_every_error_class_derives_from_the_package_root(package, root) -> None:
    # TokenInitError is also an Ansible module_util (roles/hsm): it imports nothing of ours.
    exempt = {"securecore.keys.token_init.TokenInitError"}
    stray = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in _error_classes(package)
        if not issubclass(cls, root) and f"{cls.__module__}.{cls.__qualname__}" not in exempt
    ]
    assert not stray, stray
