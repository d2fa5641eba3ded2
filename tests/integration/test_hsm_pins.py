"""HSM PINs never reach a command line, where every local user reads them in
/proc/PID/cmdline: not when roles/hsm's `pkcs11_token` makes a token, not when
`securecore-lab init` makes a development token, and no tool is given one in the
roles, scripts, molecule scenarios, the package or the tests.

The initialisation runs for real against SoftHSM2 with the PKCS#11 tools on
PATH replaced by shims that record their arguments (then run the real tool),
while a watcher reads every process's command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.commands import ROOT, needs
from tests.support.softhsm import SOFTHSM

SO_PIN, USER_PIN = "so-pin-9157-3308", "user-pin-6614-2045"
TOOLS = ("softhsm2-util", "pkcs11-tool")
# A PIN flag of softhsm2-util or pkcs11-tool, or a PIN inside a PKCS#11 URI.
PIN_ON_A_COMMAND_LINE = re.compile(r"--(so-|new-)?pin\b|--init-token\b|pin-value=")
SEARCHED = (
    "roles",
    "molecule",
    "scripts",
    "playbooks",
    "securecore",
    "compliance",
    "tests",
    "bench",
)


def test_no_pin_flag_in_the_roles_scripts_package_or_tests() -> None:
    found = []
    for top in SEARCHED:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_symlink() or not path.is_file() or path == Path(__file__):
                continue
            if path.suffix not in (".py", ".yml", ".yaml", ".j2", ".sh", ".cfg", ".toml", ""):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            found += [
                f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                for number, line in enumerate(text.splitlines(), 1)
                if PIN_ON_A_COMMAND_LINE.search(line)
            ]
    assert found == [], "\n".join(found)


def test_both_roles_run_the_package_s_token_initialisation() -> None:
    """roles/hsm and roles/compliance_scheduler make tokens with the code tested here."""
    source = (ROOT / "securecore" / "keys" / "token_init.py").resolve()
    for role in ("hsm", "compliance_scheduler"):
        role_dir = ROOT / "roles" / role
        assert (role_dir / "module_utils" / "pkcs11_token_init.py").resolve() == source
        module = (role_dir / "library" / "pkcs11_token.py").read_text()
        assert "from ansible.module_utils.pkcs11_token_init import" in module


class CommandLines:
    """Every command line seen while it runs: the shims' records and, polled, /proc."""

    def __init__(self, directory: Path) -> None:
        self.log = directory / "argv.log"
        self.shims = directory / "shims"
        self.shims.mkdir()
        for tool in TOOLS:
            real = subprocess.run(["which", tool], capture_output=True, text=True, check=False)
            shim = self.shims / tool
            shim.write_text(
                f'#!/bin/sh\nprintf "%s\\n" "{tool} $*" >> {self.log}\n'
                f'exec {real.stdout.strip() or "/bin/false"} "$@"\n'
            )
            shim.chmod(0o755)
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    try:
                        self.seen.add((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
                    except (OSError, UnicodeDecodeError):
                        continue

    def environment(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.shims}:{os.environ['PATH']}"}

    def __enter__(self) -> CommandLines:
        self._watcher.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._watcher.join(timeout=10)
        if self.log.exists():
            self.seen.update(self.log.read_text().splitlines())

    def with_any_of(self, *secrets: str) -> list[str]:
        return [line for line in self.seen if any(secret in line for secret in secrets)]


def test_the_role_makes_a_token_with_no_pin_on_any_command_line(
    softhsm: Path, tmp_path: Path
) -> None:
    # The PINs reach Ansible in a vars file, as from ansible-vault: not in its arguments.
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps({"so_pin": SO_PIN, "user_pin": USER_PIN}))
    role = ROOT / "roles" / "hsm"
    arguments = json.dumps(
        {
            "module": str(SOFTHSM),
            "label": "securecore",
            "so_pin": "{{ so_pin }}",
            "user_pin": "{{ user_pin }}",
        }
    )
    with CommandLines(tmp_path) as lines:
        proc = subprocess.run(
            [
                "ansible",
                "localhost",
                "-M",
                str(role / "library"),
                "-m",
                "pkcs11_token",
                "-a",
                arguments,
                "-e",
                f"@{pins}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={
                **lines.environment(),
                "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_MODULE_UTILS": str(role / "module_utils"),
            },
        )
    assert "CHANGED" in proc.stdout, proc.stdout + proc.stderr
    assert SO_PIN not in proc.stdout + proc.stderr and USER_PIN not in proc.stdout + proc.stderr
    assert any("pkcs11_token" in line or "AnsiballZ" in line for line in lines.seen)  # it watched
    assert lines.with_any_of(SO_PIN, USER_PIN) == []
    # The token is there, and the PINs are the ones given.
    opened = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pkcs11, sys\n"
            f"token = pkcs11.lib({str(SOFTHSM)!r}).get_token(token_label='securecore')\n"
            "so_pin, user_pin = sys.stdin.read().split()\n"
            "with token.open(user_pin=user_pin): pass\n"
            "with token.open(rw=True, so_pin=so_pin): pass\n"
            "print(token.serial.decode())",
        ],
        input=f"{SO_PIN}\n{USER_PIN}\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert opened.returncode == 0 and opened.stdout.strip(), opened.stderr


def test_securecore_init_makes_its_token_with_no_pin_on_any_command_line(
    softhsm: Path, tmp_path: Path
) -> None:
    needs(*TOOLS)
    if not SOFTHSM.exists():
        pytest.skip("SoftHSM2 is not installed")
    setup = tmp_path / "dev"
    with CommandLines(tmp_path) as lines:
        made = subprocess.run(
            [sys.executable, "-m", "securecore_lab", "init", str(setup)],
            cwd=ROOT,
            env=lines.environment(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert made.returncode == 0, made.stderr
    assert "SoftHSM2 token 'securecore'" in made.stdout
    pins = [
        (setup / "secrets" / name).read_text().strip() for name in ("hsm_so_pin", "hsm_user_pin")
    ]
    assert lines.with_any_of(*pins) == []
    checked = subprocess.run(
        [sys.executable, "-m", "securecore", "audit", "verify", "-c", str(setup / "config.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
