#!/usr/bin/python3
"""What a host is doing now, for an incident's forensic record (REQ-IR-6). Read-only.

Run on the host as root by `compliance forensics` (ansible.builtin.script, as the
compliance facts are): the host's own python3, standard library only, nothing
installed, nothing written. Prints one JSON object:
- processes: pid, parent, user, command, its executable's path and SHA-256 (read
  through /proc/PID/exe, so a deleted or replaced binary is hashed as it runs),
  whether that executable was deleted, and when the process started;
- sockets: every TCP and UDP socket with its state, addresses and process (ss);
- users: who is logged in (who);
- journal: the last JOURNAL_HOURS of the journal, and of the authentication facilities;
- aide: the newest AIDE report (Debian's daily check writes it);
- packages: every installed package and version; integrity: what `dpkg --verify` finds
  changed in them;
- firewall: the ruleset as nft lists it (no counters);
- service: `securecore facts` where the core service is installed.
Secrets are masked in command lines (what follows --password, --token, ...; a
NAME=VALUE whose name says so) and, by their form, in command lines and log lines (an
Authorization header, password=..., a URL's password); each command line's unmasked
SHA-256 is kept. The bundle masks secret-named fields again. Each part has its time
(PART_SECONDS); one that fails or takes longer is named in `_errors`, and the others
are still collected. What this prints is what the host says: root on the host can
make it say anything, and the bundle's signature proves what the management host
received from it, not that it is true.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

JOURNAL_HOURS = 24
JOURNAL_LINES = 5000
REPORT_BYTES = 256 * 1024
SECRET = re.compile(r"(pass(word|phrase)?|token|secret|pin|private|key|hmac|credential)", re.I)
MASK = "***"
SECURECORE_BIN = "/opt/securecore/current/venv/bin/securecore"
SECURECORE_CONFIG = "/etc/securecore/securecore.toml"
SOFTHSM_CONF = "/etc/securecore/softhsm2.conf"
AIDE_LOGS = ("/var/log/aide/aide.log",)
EXECUTABLE_BYTES = 512 * 1024 * 1024
# Each part's time on the host: a part that takes longer is named in _errors, the others
# are still collected (dpkg --verify reads every installed file).
PART_SECONDS = {"integrity": 300}
DEFAULT_PART_SECONDS = 120
# Secrets by their form, wherever they appear in a line (a log's, a command's).
SECRET_VALUES = [
    (re.compile(r"(?i)(authorization:\s*(?:bearer|basic)\s+)\S+"), r"\1***"),
    (
        re.compile(
            r"(?i)\b((?:pass(?:word|phrase)?|token|secret|pin|api[_-]?key)\s{0,8}[=:]\s{0,8})\S+"
        ),
        r"\1***",
    ),
    # Bounded: a command line is the user's to choose (128 kB an argument), and an
    # unbounded \w+ before "://" would backtrack over all of it at every position.
    (re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]{0,31}://[^/\s:@]{1,256}:)[^@\s/]{1,256}@"), r"\1***@"),
]


def run(*command: str, timeout: float = 60) -> str:
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, errors="replace"
    )
    if done.returncode != 0 and not done.stdout:
        raise RuntimeError(f"{command[0]} exited {done.returncode}: {done.stderr.strip()[:300]}")
    return done.stdout


def masked_line(line: str) -> str:
    """LINE with secrets of a known form (an Authorization header, NAME=VALUE of a secret's
    name, a URL's password) masked."""
    for pattern, replacement in SECRET_VALUES:
        line = pattern.sub(replacement, line)
    return line


def masked_command(arguments: list[str]) -> list[str]:
    """ARGUMENTS with what follows a secret-named option, a secret-named NAME=VALUE's
    value and secrets of a known form (masked_line) replaced by a mask."""
    shown, hide_next = [], False
    for argument in arguments:
        if hide_next and not argument.startswith("-"):
            shown.append(MASK)
            hide_next = False
            continue
        hide_next = False
        name, equals, _ = argument.partition("=")
        if equals and SECRET.search(name):
            shown.append(f"{name}={MASK}")
        elif argument.startswith("-") and SECRET.search(argument):
            shown.append(argument)
            hide_next = True
        else:
            shown.append(masked_line(argument))
    return shown


def executable_hash(path: Path, size: int) -> str | None:
    """The SHA-256 of the executable at PATH; None above EXECUTABLE_BYTES (a huge or
    sparse file must not hold the collection up)."""
    if size > EXECUTABLE_BYTES:
        return None
    with path.open("rb") as binary:
        return hashlib.file_digest(binary, "sha256").hexdigest()


def processes() -> list[dict]:
    ticks, boot = (
        os.sysconf("SC_CLK_TCK"),
        time.time() - float(Path("/proc/uptime").read_text().split()[0]),
    )
    hashes: dict[tuple[int, int], str | None] = {}
    found = []
    for entry in sorted(
        Path("/proc").iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0
    ):
        if not entry.name.isdigit():
            continue
        try:
            # A process's name and paths are whatever its user chose: bytes, decoded so
            # that nothing it names can break the record (undecodable bytes as \xNN).
            stat = (entry / "stat").read_bytes().decode(errors="backslashreplace")
            status = dict(
                line.split(":", 1)
                for line in (entry / "status")
                .read_bytes()
                .decode(errors="backslashreplace")
                .splitlines()
                if ":" in line
            )
            cmdline = (entry / "cmdline").read_bytes()
            arguments = cmdline.split(b"\0")
        except OSError:
            continue  # ended meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        uid = int(status.get("Uid", "0").split()[0])
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
        command = [a.decode(errors="backslashreplace") for a in arguments if a]
        process = {
            "pid": int(entry.name),
            "ppid": int(fields[1]),
            "user": user,
            "name": stat[stat.index("(") + 1 : stat.rindex(")")],
            "command": masked_command(command),
            # What ran, unmasked, by its hash (of the kernel's copy: each argument
            # ends in a NUL): a value the mask hides can still be shown to be the one
            # suspected.
            "command_sha256": hashlib.sha256(cmdline).hexdigest(),
            "started": round(boot + int(fields[19]) / ticks),
        }
        try:
            link = os.fsencode((entry / "exe").readlink())
            shown = link.decode(errors="backslashreplace")
            process["exe"] = shown.removesuffix(" (deleted)")
            process["exe_deleted"] = shown.endswith(" (deleted)")
            info = (entry / "exe").stat()
            identity = (info.st_dev, info.st_ino)
            if identity not in hashes:
                hashes[identity] = executable_hash(entry / "exe", info.st_size)
            process["exe_sha256"] = hashes[identity]
        except OSError:
            process["exe"] = None  # a kernel thread, or gone
        found.append(process)
    return found


def sockets() -> list[dict]:
    found = []
    for line in run("ss", "-H", "-t", "-u", "-a", "-n", "-p").splitlines():
        parts = line.split(None, 6)
        if len(parts) < 6:
            continue
        found.append(
            {
                "protocol": parts[0],
                "state": parts[1],
                "local": parts[4],
                "peer": parts[5],
                "process": parts[6] if len(parts) > 6 else "",
            }
        )
    return found


def users() -> list[str]:
    return run("who", "--ips").splitlines()


def journal() -> dict:
    since = f"-{JOURNAL_HOURS}h"
    asked = ["journalctl", "--no-pager", "-o", "short-iso", "--since", since]
    asked += ["-n", str(JOURNAL_LINES)]
    recent = run(*asked)
    # The authentication facilities: auth (4) and authpriv (10).
    authentication = run(*asked, "SYSLOG_FACILITY=4", "SYSLOG_FACILITY=10")
    return {
        "hours": JOURNAL_HOURS,
        "recent": [masked_line(line) for line in recent.splitlines()],
        "authentication": [masked_line(line) for line in authentication.splitlines()],
    }


def aide() -> dict:
    for name in AIDE_LOGS:
        path = Path(name)
        if path.is_file():
            with path.open("rb") as report:
                report.seek(max(0, path.stat().st_size - REPORT_BYTES))
                return {
                    "report": name,
                    "modified": round(path.stat().st_mtime),
                    "text": report.read().decode(errors="replace"),
                }
    return {"report": None}


def packages() -> list[str]:
    return run(
        "dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\\n"
    ).splitlines()


def integrity() -> list[str]:
    # dpkg --verify exits 1 when it finds something: its output is the finding.
    return run("dpkg", "--verify", timeout=300).splitlines()


def firewall() -> str:
    return run("nft", "--stateless", "list", "ruleset")


def service() -> dict | None:
    if not Path(SECURECORE_BIN).exists():
        return None
    as_service = ["runuser", "-u", "securecore", "--", "env", f"SOFTHSM2_CONF={SOFTHSM_CONF}"]
    return json.loads(
        run(*as_service, SECURECORE_BIN, "facts", "-c", SECURECORE_CONFIG, timeout=120)
    )


PARTS = {
    "processes": processes,
    "sockets": sockets,
    "users": users,
    "journal": journal,
    "aide": aide,
    "packages": packages,
    "integrity": integrity,
    "firewall": firewall,
    "service": service,
}


def main() -> int:
    facts: dict = {"host": socket.gethostname(), "collected_at": time.time(), "_errors": {}}

    def too_long(signum: int, frame: object) -> None:
        raise TimeoutError("took longer than its time")

    signal.signal(signal.SIGALRM, too_long)
    for name, part in PARTS.items():
        signal.alarm(PART_SECONDS.get(name, DEFAULT_PART_SECONDS))
        try:
            facts[name] = part()
        except Exception as error:  # one part failing leaves the others collected
            facts[name] = None
            facts["_errors"][name] = f"{type(error).__name__}: {error}"[:500]
        finally:
            signal.alarm(0)
    json.dump(facts, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
