"""Helpers for tests that run the project's commands as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run a command from the project root with the project's ansible.cfg."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    # Molecule exports ANSIBLE_FORCE_COLOR for its own runs; output that tests
    # read must be plain text.
    env.pop("ANSIBLE_FORCE_COLOR", None)
    proc = subprocess.run(
        list(args),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def needs(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (installed by scripts/bootstrap.sh)")


def run_module(
    role: str,
    module_name: str,
    args: dict,
    *,
    check: bool = False,
    secrets: tuple[str, ...] = (),
) -> dict:
    """Run one of ROLE's modules on localhost through `ansible`, as the role runs it.

    Returns the module's result. Fails the test if any of `secrets` appears in
    anything Ansible printed.
    """
    role_dir = ROOT / "roles" / role
    proc = subprocess.run(
        [
            "ansible",
            "localhost",
            "-M",
            str(role_dir / "library"),
            "-m",
            module_name,
            "-a",
            json.dumps(args),
            *(["--check"] if check else []),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **{k: v for k, v in os.environ.items() if k != "ANSIBLE_FORCE_COLOR"},
            "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_MODULE_UTILS": str(role_dir / "module_utils"),
        },
    )
    output = proc.stdout + proc.stderr
    for secret in secrets:
        assert secret not in output, f"a secret appeared in the output of {module_name}"
    # "localhost | CHANGED => {...}"
    if "=>" not in proc.stdout:
        pytest.fail(f"{module_name} printed no result:\n{output}")
    header, body = proc.stdout.split("=>", 1)
    result = json.loads(body)
    # The JSON callback leaves "failed" out of the body; the header says it.
    result["failed"] = result.get("failed") or "FAILED" in header
    result["_warnings_text"] = proc.stderr + " ".join(result.get("warnings", []))
    return result
