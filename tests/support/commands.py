"""The project's commands run as a user would run them: ansible, `securecore`, `compliance`,
and the outside verifier of the documented audit export format."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[2]


def ansible_env(**extra: str) -> dict[str, str]:
    """The environment for an Ansible command whose output is read: the project's
    ansible.cfg, plain text (molecule exports ANSIBLE_FORCE_COLOR for its own runs),
    and `extra` on top."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    env.pop("ANSIBLE_FORCE_COLOR", None)
    return {**env, **extra}


# A host's line of a play recap: "core-01 : ok=230 changed=0 unreachable=0 failed=0 ..."
RECAP_LINE = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")


def play_recap(output: str) -> dict[str, dict[str, int]]:
    """Each host's counts (ok, changed, failed, ...) from the last PLAY RECAP of an
    ansible-playbook run's output; empty if it has none."""
    _, found, recap = output.rpartition("PLAY RECAP")
    hosts: dict[str, dict[str, int]] = {}
    for line in recap.splitlines() if found else []:
        match = RECAP_LINE.match(line.strip())
        if match:
            counts = dict(pair.split("=") for pair in match.group(2).split())
            hosts[match.group(1)] = {key: int(value) for key, value in counts.items()}
    return hosts


def run(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run a command from the project root with the project's ansible.cfg."""
    proc = subprocess.run(
        list(args),
        cwd=ROOT,
        env=ansible_env(),
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


WRITE_RECORDS = """
import sys
from securecore import config
from securecore.audit.factory import open_audit_log
from securecore.keys.factory import open_key_ring
settings = config.load(sys.argv[1])
ring = open_key_ring(settings)
log = open_audit_log(settings, ring)
for i in range(int(sys.argv[2])):
    log.append("alice", "plugin.call", f"plugin-{i % 3}", "success", {"i": i, "password": "pw-123"})
log.close()
public = ring.backend.public_key(ring.current(ring.signing_key))
from cryptography.hazmat.primitives import serialization
sys.stdout.write(public.public_bytes(serialization.Encoding.PEM,
                 serialization.PublicFormat.SubjectPublicKeyInfo).decode())
"""


def securecore(
    *args: str, check: bool = True, tool: str = "securecore"
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", tool, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def securecore_lab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The development tools (`securecore-lab init DIR` makes a development setup)."""
    return securecore(*args, check=check, tool="securecore_lab")


def outside_verifier(lines: list[str], public_pem: str) -> int:
    """The documented export format, verified with hashlib and cryptography only."""
    public = serialization.load_pem_public_key(public_pem.encode())
    header = json.loads(lines[0])
    assert header["format"] == "securecore-audit-export/1"
    leaves, roots = [], {}
    checkpoints = []
    for raw in lines[1:]:
        item = json.loads(raw)
        if item["type"] == "record":
            assert item["seq"] == len(leaves) + 1
            text = json.dumps(
                item["record"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
            # Lone surrogates stay escapes (docs/audit-export.md).
            entry = re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m[0]):04x}", text).encode()
            leaves.append(hashlib.sha256(b"\x00" + entry).digest())
        else:
            checkpoints.append(item)

    def mth(hashes_: list[bytes]) -> bytes:
        if not hashes_:
            return hashlib.sha256(b"").digest()
        if len(hashes_) == 1:
            return hashes_[0]
        k = 1 << ((len(hashes_) - 1).bit_length() - 1)
        return hashlib.sha256(b"\x01" + mth(hashes_[:k]) + mth(hashes_[k:])).digest()

    for item in checkpoints:
        text, signature_line = item["note"].split("\n\n")
        origin, size, root_b64 = text.split("\n")
        assert origin == header["origin"] and int(size) == item["size"]
        blob = base64.b64decode(signature_line.rsplit(" ", 1)[1])
        public.verify(blob[4:], (text + "\n").encode(), ec.ECDSA(hashes.SHA256()))
        roots[int(size)] = base64.b64decode(root_b64)
        assert mth(leaves[: int(size)]) == roots[int(size)], f"checkpoint {size}"
    return len(roots)


# Series heads of controller runs go under $XDG_STATE_HOME: a scratch one for the tests,
# never the user's own.
STATE = Path(tempfile.mkdtemp(prefix="compliance-state-"))


def compliance(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "XDG_STATE_HOME": os.environ.get("XDG_STATE_HOME", str(STATE))}
    return subprocess.run(
        [sys.executable, "-m", "compliance.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=environment,
    )
