"""A thin, typed wrapper around the podman command line.

Every call goes through :meth:`Podman.run` so that the settings this kind of
machine needs (runtime runc, explicit ulimits; see ENVIRONMENT.md) are applied
in one place, without touching the machine-wide containers.conf.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from securecore_lab.errors import LabError

# crun cannot run on cgroups v1 "hybrid" hosts; runc can.
RUNTIME = "runc"
# The podman defaults exceed the hard limits of this machine, and the
# containers have no CAP_SYS_RESOURCE to raise them.
ULIMITS = ("nofile=1024:20000", "nproc=1000:1000")


class Podman:
    """Runs podman commands and turns failures into :class:`LabError`."""

    def __init__(self, executable: str = "podman") -> None:
        path = shutil.which(executable)
        if path is None:
            raise LabError(
                f"'{executable}' was not found on PATH; install it with "
                "'apt-get install podman runc' (scripts/bootstrap.sh does this)"
            )
        self.executable = path

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        input_bytes: bytes | None = None,
        stdin: Any = None,
    ) -> subprocess.CompletedProcess[str]:
        command = [self.executable, "--runtime", RUNTIME, *args]
        proc = subprocess.run(
            command,
            input=input_bytes.decode() if input_bytes is not None else None,
            stdin=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"podman {' '.join(args[:3])} failed (exit {proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def inspect(self, kind: str, name: str) -> dict[str, Any] | None:
        """Return podman's description of a container, network or image, or None."""
        proc = self.run([kind, "inspect", name], check=False)
        if proc.returncode != 0:
            return None
        data = json.loads(proc.stdout or "[]")
        return data[0] if data else None

    def names_with_label(self, kind: str, label: str) -> list[str]:
        """Names of every container or network carrying ``label`` (key=value)."""
        if kind == "container":
            proc = self.run(["ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}"])
        elif kind == "network":
            proc = self.run(
                ["network", "ls", "--filter", f"label={label}", "--format", "{{.Name}}"]
            )
        else:
            raise ValueError(f"unsupported kind {kind!r}")
        return [line for line in proc.stdout.split() if line]

    def exec(self, container: str, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return self.run(["exec", container, *command], check=False)
