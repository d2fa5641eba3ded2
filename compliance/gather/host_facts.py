#!/usr/bin/python3
"""Read-only facts of one host, for the compliance checks; runs ON the host.

Standard library only (Debian 12's python3): Ansible copies this file to the
host and runs it once per gathering pass (`ansible.builtin.script`), as root
so that it can read what the checks need. It changes nothing but its own
state file (when it first saw each pending security update, "apt_state"): it
reads files and runs commands that only report (`sshd -T`, `nft -j list ruleset`,
`timedatectl show`, `auditctl -l`, `apt-get -s dist-upgrade`, `openssl x509`,
`systemd-detect-virt`); on a monitoring host it asks the local Prometheus's HTTP API
for the service's figures of the last day (read-only queries).

It prints one JSON object. A group of facts that cannot be read (a tool not
installed, a file missing) is left out and named under "_errors": a check
over a missing fact fails, so a host never passes for lack of evidence.

An optional JSON argument overrides where it looks (tests point it at files
of their own): {"tls_dir": ..., "hardening_report": ..., "securecore_dir": ...}.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import math
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

# How long a security update may wait, by its urgency (REQ-HARD-12). The compliance
# package reads the same table for the period report's deadlines (compliance.checks).
PATCH_SLA_HOURS = {"critical": 24, "high": 7 * 24, "medium": 30 * 24, "low": 90 * 24}

DEFAULTS = {
    "tls_dir": "/etc/securecore/tls",
    "hardening_report": "/var/lib/securecore/hardening.json",
    "sshd_config": "/etc/ssh/sshd_config",
    "login_defs": "/etc/login.defs",
    "faillock_conf": "/etc/security/faillock.conf",
    "pam_dir": "/etc/pam.d",
    "journald_dirs": ["/etc/systemd/journald.conf", "/etc/systemd/journald.conf.d/*.conf"],
    "logrotate_conf": "/etc/logrotate.conf",
    "audit_rules": "/etc/audit/rules.d/*.rules",
    "aide_db": "/var/lib/aide/aide.db",
    # Not /usr: dpkg owns it (and walking it costs seconds); /usr/local is the admins'.
    # The core service (roles/securecore): its own report, as its user.
    "securecore_config": "/etc/securecore/securecore.toml",
    "securecore_bin": "/opt/securecore/current/venv/bin/securecore",
    "securecore_user": "securecore",
    "softhsm_conf": "/etc/securecore/softhsm2.conf",
    "replica_timer": "/etc/systemd/system/securecore-replica.timer",
    "replica_store": "/var/lib/securecore/data/replica/audit.db",
    # The shared database's backup repository (roles/postgresql_backup): a
    # configuration with a local repository path is the repository host's.
    "pgbackrest_conf": "/etc/pgbackrest.conf",  # postgresql_backup_config
    # Reports of the restores of those backups on the cold site (playbooks/dr-restore.yml).
    "dr_reports": "/var/lib/securecore-dr",
    "writable_roots": ["/etc", "/usr/local", "/opt", "/var/lib"],
    "apt_sources": [
        "/etc/apt/sources.list",
        "/etc/apt/sources.list.d/*.list",
        "/etc/apt/sources.list.d/*.sources",
    ],
    # apt (REQ-HARD-12). Options for apt-get and apt-config beyond the host's own
    # configuration: tests give their own package lists, dpkg status and sources.
    "apt_options": [],
    # When the script runs as root, apt-get's simulation runs as this user: apt then
    # reads its package cache where that is up to date (a third of the time of
    # building one) and can write nothing, which it must not (it takes no lock); where
    # the cache is out of date it builds one in memory. null: as the script's user.
    "apt_user": "nobody",
    # The first time this host saw each pending security update pending: Debian's
    # indexes carry no date per package, so an update's age is how long it has waited
    # here. The only file the gatherer writes (root's, 0600, in a 0700 directory).
    "apt_state": "/var/lib/securecore-compliance/security-updates.json",
    # How long a security update may wait, by urgency (REQ-HARD-12), and the urgency
    # of one from the security suite: the changelog's urgency= cannot be had offline
    # (`apt-get changelog` asks a server), so every one is taken as "high".
    "patch_sla_hours": PATCH_SLA_HOURS,
    "security_update_class": "high",
    # Whether the host is a container (checks that do not apply there, REQ-COMP-17):
    # systemd's own answer, else the files container managers leave (file -> its
    # type; null: the file names the type, as systemd's does).
    "detect_virt": "systemd-detect-virt",
    "container_markers": {
        "/run/systemd/container": None,
        "/run/.containerenv": "podman",
        "/.dockerenv": "docker",
    },
    # Prometheus's own start-up arguments (roles/monitoring writes --web.listen-address
    # there; Debian's package ships the file): a host with it runs the site's Prometheus,
    # asked for the service's performance over the period (REQ-PERF-1 to 3, REQ-COMP-8).
    "prometheus_default": "/etc/default/prometheus",
    "performance_hours": 24,
    "prometheus_timeout": 10,
}


def dropping_to(user: str | None) -> bool:
    """Whether a command run as USER (run()) runs as another user than this script's."""
    return user is not None and os.geteuid() == 0


def run(*command: str, timeout: float = 30, user: str | None = None) -> str:
    """COMMAND's output; as USER (its own group, no other, and an environment of
    nothing but PATH: another process of that user can read it) when dropping_to(USER)."""
    identity: dict[str, Any] = {}
    environment = {**os.environ, "LC_ALL": "C"}
    if dropping_to(user):
        account = pwd.getpwnam(str(user))
        identity = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        environment = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"}
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
        env=environment,
        **identity,
    ).stdout


def read(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8", errors="replace")


def matching(pattern: str) -> list[Path]:
    """The files an absolute glob PATTERN matches, sorted."""
    return sorted(Path("/").glob(pattern.lstrip("/")))


def key_values(text: str, separator: str = r"\s+") -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            parts = re.split(separator, line, maxsplit=1)
            if len(parts) == 2:
                found[parts[0].strip().lower()] = parts[1].strip()
    return found


def number(value: str | None) -> int | None:
    return int(value) if value is not None and re.fullmatch(r"-?\d+", value) else None


# --- the fact groups --------------------------------------------------------------------


def sshd(paths: dict) -> dict:
    # The effective configuration, includes and defaults resolved by sshd itself.
    effective = key_values(run("sshd", "-T", "-f", paths["sshd_config"]))
    return {
        "permitrootlogin": effective.get("permitrootlogin"),
        "passwordauthentication": effective.get("passwordauthentication"),
        "kbdinteractiveauthentication": effective.get("kbdinteractiveauthentication"),
        "ciphers": (effective.get("ciphers") or "").split(","),
        "macs": (effective.get("macs") or "").split(","),
        "clientaliveinterval": number(effective.get("clientaliveinterval")),
        "maxauthtries": number(effective.get("maxauthtries")),
        "banner": effective.get("banner"),
    }


def pam(paths: dict) -> dict:
    faillock = key_values(read(paths["faillock_conf"]), r"\s*=\s*")
    common = " ".join(read(p) for p in sorted(Path(paths["pam_dir"]).glob("common-*")))
    history = re.search(r"pam_pwhistory\.so[^\n]*\bremember=(\d+)", common)
    su = read(Path(paths["pam_dir"]) / "su")
    return {
        "faillock": {
            "deny": number(faillock.get("deny")),
            "fail_interval": number(faillock.get("fail_interval")),
            "unlock_time": number(faillock.get("unlock_time")),
            "in_stack": "pam_faillock.so" in common,
        },
        "pwhistory": {"remember": int(history[1]) if history else None},
        "su_group_only": bool(
            re.search(r"(?m)^\s*auth\s+required\s+pam_wheel\.so\b.*\bgroup=\S+", su)
        ),
    }


def login_defs(paths: dict) -> dict:
    values = key_values(read(paths["login_defs"]))
    return {
        key: number(values.get(key)) for key in ("pass_max_days", "pass_min_days", "pass_warn_age")
    }


def nftables(paths: dict) -> dict:
    ruleset = json.loads(run("nft", "-j", "list", "ruleset"))["nftables"]
    policies: dict[str, list[str]] = {}
    for item in ruleset:
        chain = item.get("chain")
        if chain and chain.get("hook") in ("input", "forward", "output") and "policy" in chain:
            policies.setdefault(chain["hook"], []).append(chain["policy"])

    def policy(hook: str) -> str | None:
        # The strictest wins for the host: any accepting base chain lets packets on.
        found = policies.get(hook)
        if not found:
            return None
        return "accept" if "accept" in found else found[0]

    return {
        "input_policy": policy("input"),
        "forward_policy": policy("forward"),
        "output_policy": policy("output"),
    }


def network(paths: dict) -> dict:
    addresses = []
    for interface in json.loads(run("ip", "-j", "addr")):
        for address in interface.get("addr_info", []):
            if address.get("family") == "inet":
                addresses.append(address["local"])
    return {"addresses": addresses}


def virtualization(paths: dict) -> dict:
    """The container (and virtual machine) the host runs in, and how that is known."""
    tool = paths["detect_virt"] and shutil.which(paths["detect_virt"])
    if tool:
        found = {}
        for kind in ("container", "vm"):
            # Exit 1 with "none" is an answer too: not in one.
            answer = subprocess.run(
                [tool, f"--{kind}"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                env={**os.environ, "LC_ALL": "C"},
            )
            found[kind] = answer.stdout.strip()
            if answer.returncode not in (0, 1) or not found[kind]:
                raise ValueError(f"{tool} --{kind}: exit {answer.returncode} {answer.stderr!r}")
        container, vm, source = found["container"], found["vm"], f"{tool} --container --vm"
    else:
        container, vm, source = "none", None, "files"
        for marker, kind in paths["container_markers"].items():
            if Path(marker).exists():
                container = kind or read(marker).strip() or "unknown"
                source = marker
                break
    return {
        "container": container != "none",
        "container_type": None if container == "none" else container,
        "vm": None if vm in (None, "none") else vm,
        "source": source,
    }


def time_sync(paths: dict) -> dict:
    try:
        shown = key_values(run("timedatectl", "show"), "=")
        return {"synchronized": shown.get("ntpsynchronized") == "yes", "source": "timedatectl"}
    except (OSError, subprocess.SubprocessError):
        # No system bus (a container): ask chrony itself.
        tracking = key_values(run("chronyc", "-n", "tracking"), r"\s*:\s*")
        status = tracking.get("leap status", "")
        return {
            "synchronized": status.lower() == "normal",
            "source": "chronyc",
            "leap_status": status,
        }


def journald(paths: dict) -> dict:
    settings: dict[str, str] = {}
    for pattern in paths["journald_dirs"]:
        for path in matching(pattern):
            settings.update(key_values(read(path), r"\s*=\s*"))
    return {
        "storage": settings.get("storage", "auto"),
        "max_retention": settings.get("maxretentionsec"),
    }


def retention_days(value: str | None) -> int | None:
    if not value:
        return None
    match = re.fullmatch(r"(\d+)\s*(year|years|y|month|months|week|weeks|w|day|days|d)?", value)
    if not match:
        return None
    unit = (match[2] or "s")[0]
    return int(match[1]) * {"y": 365, "m": 30, "w": 7, "d": 1, "s": 0}[unit] or None


def logs(paths: dict, journal: dict | None) -> dict:
    text = read(paths["logrotate_conf"])
    rotate = key_values(text)
    periods = ("daily", "weekly", "monthly", "yearly")
    period = next((p for p in periods if re.search(rf"(?m)^{p}$", text)), "weekly")
    # `rotate N` keeps N rotated files besides the current one: N + 1 periods of logs.
    rotations = number(rotate.get("rotate")) or 0
    days = {"daily": 1, "weekly": 7, "monthly": 30, "yearly": 365}[period]
    kept = (rotations + 1) * days if rotations else 0
    journal_days = retention_days((journal or {}).get("max_retention"))
    kept_days = [d for d in (kept, journal_days) if d]
    return {
        "logrotate_days": kept,
        "journal_days": journal_days,
        "retention_days": min(kept_days) if kept_days else None,
    }


def auditd(paths: dict) -> dict:
    try:
        rules = run("auditctl", "-l")  # the loaded rules, where the kernel allows
        source = "kernel"
    except (OSError, subprocess.SubprocessError):
        rules = "\n".join(read(p) for p in matching(paths["audit_rules"]))
        source = "files"  # in a container: the rules as written
    keys = sorted(set(re.findall(r"(?:-k\s+|key=)([\w-]+)", rules)))
    return {"rule_keys": keys, "source": source}


def aide(paths: dict) -> dict:
    asked = ["systemctl", "is-enabled", "dailyaidecheck.timer"]
    enabled = subprocess.run(asked, capture_output=True, text=True, check=False).stdout.strip()
    return {
        "database": Path(paths["aide_db"]).exists() or None,
        "daily_check": enabled == "enabled",
    }


# `Inst PACKAGE [INSTALLED] (CANDIDATE ORIGIN:VERSION/ARCHIVE, ... [ARCH])`
UPGRADE = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) ([^\[]*)\[", re.MULTILINE)


def apt(paths: dict) -> dict:
    # No lock taken: nothing may be written. As apt_user apt cannot write its cache;
    # as root it would, so it is told to keep the cache it builds in memory.
    options = ["-o", "Debug::NoLocking=1", *paths["apt_options"]]
    if not dropping_to(paths["apt_user"]):
        options += ["-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache="]
    # dist-upgrade, not upgrade: a security update that needs a new package (a
    # kernel's new ABI) is held back by upgrade and would not be seen.
    simulated = run("apt-get", "-s", *options, "dist-upgrade", timeout=120, user=paths["apt_user"])
    upgrades = UPGRADE.findall(simulated)
    security = [(name, version) for name, version, origins in upgrades if "-security" in origins]
    config = key_values(run("apt-config", *options, "dump"), r"\s+")
    unattended = config.get("apt::periodic::unattended-upgrade", "").strip('";') == "1"
    insecure = [
        name
        for name in (
            "apt::get::allowunauthenticated",
            "acquire::allowinsecurerepositories",
            "acquire::allowdowngradetoinsecurerepositories",
        )
        if config.get(name, "").strip('";').lower() in ("1", "true", "yes")
    ]
    located = key_values(
        run(
            "apt-config", *options, "shell", "LISTS", "Dir::State::Lists/d", "STATE", "Dir::State/d"
        ),
        "=",
    )
    lists, state = (Path(located[k].strip("'")) for k in ("lists", "state"))
    now = time.time()
    freshness = security_lists(lists, state, now)
    facts = {
        "pending_updates": len(upgrades),
        "pending_security_updates": len(security),
        "security_packages": [name for name, _ in security],
        "unattended_upgrades": unattended,
        "unsigned_sources": unsigned_sources(paths),
        "insecure_options": insecure,
        **freshness,
    }
    return {**facts, **security_update_ages(paths, security, freshness["lists_age_hours"], now)}


def security_lists(lists: Path, state: Path, now: float) -> dict:
    """How old what apt knows of the security suite is: the newest of its Release
    files (apt dates them with the server's Last-Modified, so the lists were fetched
    after it) and of the stamps of a successful `apt-get update` (apt's periodic
    job, and the success stamp where one is configured). None without the suite's
    lists: then nothing pending proves nothing."""
    releases = [
        p for p in lists.glob("*-security_*Release") if p.name.endswith(("_InRelease", "_Release"))
    ]
    if not releases:
        return {"lists_age_hours": None, "lists_newest": None, "security_lists": []}
    stamps = [state / "periodic" / name for name in ("update-success-stamp", "update-stamp")]
    dated = [(p.stat().st_mtime, str(p)) for p in [*releases, *stamps] if p.is_file()]
    newest, where = max(dated)
    return {
        "lists_age_hours": round((now - newest) / 3600, 1),
        "lists_newest": where,
        "security_lists": sorted(p.name for p in releases),
    }


def security_update_ages(
    paths: dict, pending: list[tuple[str, str]], lists_age: float | None, now: float
) -> dict:
    """Each pending security update with its class, age and deadline (REQ-HARD-12),
    and those past it. The age is kept in the state file: the first time this host saw
    the package pending, carried over when a newer version replaces the pending one (the
    older fix is still not installed). An update no longer pending is forgotten, unless
    the lists are missing (then nothing is known to be applied)."""
    path = Path(paths["apt_state"])
    cls = paths["security_update_class"]
    deadline = paths["patch_sla_hours"][cls]
    try:
        known = read_state(path)
        seen = {}
        for package, version in pending:
            earlier = [t for k, t in known.items() if k.split("=", 1)[0] == package]
            seen[f"{package}={version}"] = known.get(
                f"{package}={version}", min(earlier, default=now)
            )
        kept = seen if lists_age is not None else {**known, **seen}
        if kept != known:
            write_state(path, kept)
    except (OSError, ValueError) as error:
        # Without the state no age is known: no verdict on the deadlines (the check fails).
        return {
            "security_updates": [{"package": p, "version": v} for p, v in pending],
            "overdue_security_updates": None,
            "security_update_state": f"{type(error).__name__}: {error}"[:300],
        }
    updates = []
    for package, version in pending:
        first = seen[f"{package}={version}"]
        updates.append(
            {
                "package": package,
                "version": version,
                "class": cls,
                "first_seen": datetime.datetime.fromtimestamp(first, datetime.UTC).isoformat(),
                "age_hours": round((now - first) / 3600, 1),
                "sla_hours": deadline,
            }
        )
    return {
        "security_updates": updates,
        "overdue_security_updates": [
            {k: u[k] for k in ("package", "version", "class", "age_hours", "sla_hours")}
            for u in updates
            if u["age_hours"] > u["sla_hours"]
        ],
        "security_update_state": str(path),
        # Where the class came from: every update of the security suite gets the default.
        "security_update_class": f"{cls} (the default: no urgency is known offline)",
    }


def read_state(path: Path) -> dict[str, float]:
    if not path.exists() and not path.is_symlink():
        return {}
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(descriptor, encoding="utf-8") as handle:
        data = json.load(handle)
    first_seen = data.get("first_seen") if isinstance(data, dict) else None
    if not isinstance(first_seen, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) for k, v in first_seen.items()
    ):
        raise ValueError(f"{path}: not a state file of this gatherer")
    return first_seen


def write_state(path: Path, first_seen: dict[str, float]) -> None:
    """Atomically, 0600 in a 0700 directory of root's: no one else may age an update."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.lstat()
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.geteuid()
        or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        raise OSError(f"{directory}: not a directory only this user may write")
    staging = directory / f".{path.name}.{os.getpid()}"
    staging.unlink(missing_ok=True)  # left by a run that died here (the pid came back)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(staging, flags, 0o600), "w", encoding="utf-8") as handle:
        json.dump({"first_seen": first_seen}, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    staging.replace(path)


def unsigned_sources(paths: dict) -> list[str]:
    """Package sources whose signatures apt is told not to check: "FILE: line"."""
    found = []
    for pattern in paths["apt_sources"]:
        for path in matching(pattern):
            for line in read(path).splitlines():
                text = line.split("#", 1)[0].strip().lower().replace(" ", "")
                if (
                    "trusted=yes" in text
                    or "allow-insecure=yes" in text
                    or text in ("trusted:yes", "allow-insecure:yes")
                ):
                    found.append(f"{path}: {line.strip()}")
    return found


def tls(paths: dict) -> tuple[dict, dict]:
    policy = json.loads(read(Path(paths["tls_dir"]) / "policy.json"))
    summary = {
        "minimum_version": policy.get("minimum_version", "TLSv1.3"),
        "maximum_version": policy.get("maximum_version", "TLSv1.3"),
        "client_certificate_required": True,  # the policy always requires one (securecore.tls)
        "ciphersuites": policy.get("ciphersuites")
        or ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"],
        "crl_check": policy.get("crl_check", "leaf"),
    }
    now = datetime.datetime.now(datetime.UTC)
    left = {}
    for path in sorted(Path(paths["tls_dir"]).glob("*.pem")):
        if "BEGIN CERTIFICATE" not in read(path):
            continue  # the CRL
        text = run("openssl", "x509", "-noout", "-enddate", "-in", str(path))
        ends = datetime.datetime.strptime(text.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z")
        left[path.name] = (ends.replace(tzinfo=datetime.UTC) - now).days
    certificates = {"days_left": left, "fewest_days_left": min(left.values()) if left else None}
    return summary, certificates


def hardening(paths: dict) -> dict:
    report = json.loads(read(paths["hardening_report"]))
    controls = report.get("controls", {})
    statuses = {name: c.get("status") for name, c in controls.items()}
    return {
        "controls": len(statuses),
        "unapplied": sorted(
            n for n, s in statuses.items() if s not in ("applied", "exempt", "container")
        ),
        "exempt": sorted(n for n, s in statuses.items() if s == "exempt"),
        "limited_in_container": sorted(n for n, s in statuses.items() if s == "container"),
    }


def world_writable(paths: dict) -> dict:
    """Regular files anyone may write under the roots (the first 100 and how many).
    find(1) walks them: in Python a stat per file took a third of a host's gathering
    time. -H: a root that is a symbolic link is walked (below it, none is followed);
    absolute roots: none can be read as part of find's expression."""
    roots = [str(Path(root).absolute()) for root in paths["writable_roots"] if Path(root).exists()]
    if not roots:
        return {"world_writable": [], "world_writable_count": 0}
    walked = subprocess.run(
        ["find", "-H", *roots, "-type", "f", "-perm", "-0002", "-print0"],
        capture_output=True,
        timeout=120,
        check=False,  # an unreadable directory on the way is no reason to see nothing
    )
    found = [os.fsdecode(path) for path in walked.stdout.split(b"\0") if path]
    return {"world_writable": sorted(found)[:100], "world_writable_count": len(found)}


def securecore(paths: dict) -> dict:
    """`securecore facts` as the service user (it opens the HSM token), and the copy of
    the active's audit log this host keeps if it is not the active one."""
    facts = json.loads(
        run(
            "runuser",
            "-u",
            paths["securecore_user"],
            "--",
            "env",
            f"SOFTHSM2_CONF={paths['softhsm_conf']}",
            paths["securecore_bin"],
            "facts",
            "-c",
            paths["securecore_config"],
            timeout=120,
        )
    )
    if Path(paths["replica_timer"]).exists():
        store = Path(paths["replica_store"])
        newest = max((p.stat().st_mtime for p in store.parent.glob(store.name + "*")), default=None)
        age = (time.time() - newest) / 60 if newest else None
        facts["replica"] = {"role": "copy", "age_minutes": round(age, 1) if age else age}
    else:
        facts["replica"] = {"role": "active"}
    return facts


def database_backup(paths: dict) -> dict:
    """The backups of the shared database this host keeps (`pgbackrest info`, as
    postgres; it reports no secret): each stanza's status, and over all stanzas
    whether every one is ok and the age of the oldest newest-full backup."""
    info = json.loads(
        run("runuser", "-u", "postgres", "--", "pgbackrest", "--output=json", "info", timeout=60)
    )
    now = time.time()

    def age_hours(backups: list[dict]) -> float | None:
        newest = max((b["timestamp"]["stop"] for b in backups), default=None)
        return round((now - newest) / 3600, 1) if newest is not None else None

    stanzas = {}
    for stanza in info:
        backups = stanza.get("backup", [])
        stanzas[stanza["name"]] = {
            "status": stanza["status"]["message"],
            "ok": stanza["status"]["code"] == 0,
            "backups": len(backups),
            "newest_full_age_hours": age_hours([b for b in backups if b["type"] == "full"]),
            "newest_age_hours": age_hours(backups),
        }
    fulls = [s["newest_full_age_hours"] for s in stanzas.values()]
    return {
        "stanzas": stanzas,
        "ok": bool(stanzas) and all(s["ok"] for s in stanzas.values()),
        # A stanza without a full backup makes this None: the check fails.
        "newest_full_age_hours": None if not fulls or None in fulls else max(fulls),
    }


def dr_drills(paths: dict) -> dict:
    """The cold site's restore drills of the backups this host keeps: the newest
    report's age, recovery time and point, and whether its audit log verified (the
    check holds them to the objectives itself, not to the report's own verdict)."""
    reports = sorted(Path(paths["dr_reports"]).glob("*.json"))
    found = []
    for path in reports:
        report = json.loads(read(path))
        started = datetime.datetime.fromisoformat(report["started"].replace("Z", "+00:00"))
        found.append((started, path.name, report))
    if not found:
        return {"count": 0, "newest": None, "newest_age_days": None}
    started, name, report = max(found, key=lambda item: item[0])
    age = (datetime.datetime.now(datetime.UTC) - started).total_seconds() / 86400
    return {
        "count": len(found),
        "newest": name,
        "newest_age_days": round(age, 2),
        "rto_seconds": report.get("rto_seconds"),
        "rpo_seconds": report.get("rpo_seconds"),
        "audit_verified": str(report.get("audit_verify", "")).startswith("audit log OK"),
        "audit_gap": report.get("audit_gap"),
    }


# --- performance, from the site's Prometheus (monitoring hosts) ----------------------------

# The core's series (securecore/monitoring/metrics.py) as roles/monitoring scrapes them.
CORE = 'job="securecore"'
AUTH = f'{CORE},route="/v1/sessions"'  # POST only: the route has no other method
PLUGIN_CALL = f'{CORE},route="/v1/plugins/{{name}}/call"'
CLIENT = f'{CORE},route=~"/v1/.+"'  # the clients' requests: not /healthz, /readyz, /metrics


def prometheus_url(paths: dict) -> str:
    """The address Prometheus listens on, from the arguments it is started with (its
    default :9090 without the option; a wildcard address is asked on loopback)."""
    args = key_values(read(paths["prometheus_default"]), r"\s*=\s*").get("args", "")
    if "--web.config.file" in args:
        raise ValueError(
            f"{paths['prometheus_default']}: Prometheus serves TLS or asks for "
            "credentials (--web.config.file): not read by this gatherer"
        )
    found = re.search(r"--web\.listen-address[= ]['\"]?([^\s'\"]+)", args)
    host, _, port = (found[1] if found else ":9090").rpartition(":")
    try:
        wildcard = not host or ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False  # a name
    if wildcard:
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def prometheus_query(base: str, query: str, at: float, timeout: float) -> list[dict]:
    """The instant vector QUERY gives at AT: [{"metric": labels, "value": float}]."""
    request = urllib.request.Request(  # noqa: S310 (http:// always: prometheus_url)
        f"{base}/api/v1/query",
        data=urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    # Never through a proxy of the environment: the question is for this host's Prometheus.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as answer:
            document = json.load(answer)
    except urllib.error.HTTPError as error:
        document = json.loads(error.read() or b"{}")
    if document.get("status") != "success":
        raise ValueError(f"{query}: {document.get('errorType')}: {document.get('error')}")
    if document["data"]["resultType"] != "vector":
        raise ValueError(f"{query}: a {document['data']['resultType']}, not a vector")
    return [
        {"metric": r["metric"], "value": float(r["value"][1])}
        for r in document["data"]["result"]
        if r["value"][1] not in ("NaN", "+Inf", "-Inf")
    ]


# What the service's availability is judged on (REQ-PERF-8). The core exports no
# readiness series: securecore_up is 1 whenever the process answers, which up already
# says, and /readyz's verdict reaches Prometheus only as the edge's view of it
# (haproxy_server_status, relayed through node_exporter's textfile directory on the edge
# hosts, job "node"): a series of another job, from another host, which a stalled relay
# leaves stale. So the service is available while at least one core instance answers
# Prometheus's own mutual-TLS scrape of it, up{job="securecore"} = 1, measured where the
# figure is kept. One instance's restart (a rolling release, a lab test) while another
# serves is no outage of the service; each instance's share is reported, not judged.
SERVICE_UP = f"max(up{{{CORE}}})"

# The figures with a target: (name, metric, selector, quantile, its label, what it counts).
FIGURES = (
    (
        "auth",
        "securecore_request_duration_seconds",
        AUTH,
        0.95,
        "p95",
        "authentication requests (POST /v1/sessions)",
    ),
    (
        "plugin",
        "securecore_request_duration_seconds",
        PLUGIN_CALL,
        0.95,
        "p95",
        "plugin calls (POST /v1/plugins/{name}/call)",
    ),
    ("audit", "securecore_audit_write_seconds", CORE, 0.99, "p99", "audit writes"),
)

# The fewest samples a figure is judged on (REQ-PERF-8). Below them the figure is
# reported, not judged: a p99 of 12 writes is their slowest one, a 5xx share of 20
# requests moves by 5 % with one error, and 0.1 % of downtime cannot be told from
# fewer than a thousand scrapes - a site would pass or fail on one sample, as a
# machine busy at that moment decides. The figures are also judged on a whole day
# only: a site monitored for less is reported, not judged, since its hours are its
# deployment's, whose own load (packages installed, services restarted beside the
# core) would be most of a young site's slowest writes and none of a day's.
MIN_SAMPLES = {"p95": 20, "p99": 100, "requests": 100, "scrapes": 1000}
JUDGED = {"p95": "a p95", "p99": "a p99", "requests": "a 1 % share", "scrapes": "99.9 %"}


def performance(paths: dict) -> dict:
    """The core's figures over the last PERFORMANCE_HOURS, or since Prometheus's first
    sample of the core on a site monitored for less (the window, its length reported):
    authentication and plugin-call p95, audit-write p99, the share of client requests
    answered 5xx, and the service's availability (the share of the window in which at
    least one core instance answered), each instance's own share for information.

    A figure with nothing to measure (no request of its kind in the window: a site with
    no user yet) is null, its count 0 and its reason in not_measured: no traffic is no
    breach of a latency target. A figure is judged (its *_judged true) on a whole window
    of PERFORMANCE_HOURS with enough samples only (MIN_SAMPLES); otherwise reported. A
    Prometheus that does not answer, or that has no sample
    of the core at all, is a failure of the monitoring: monitoring_error says which, with
    Prometheus's address, and no summary is made."""
    base = prometheus_url(paths)
    now = time.time()
    hours = float(paths["performance_hours"])
    timeout = float(paths["prometheus_timeout"])
    facts: dict[str, Any] = {
        "prometheus": base,
        "monitoring_error": None,
        "window_hours": None,
        "period": None,
        "full_window": False,
        "scrape_step_seconds": None,
        "not_measured": [],
        "availability_percent": None,
        "instance_availability_percent": {},
        "requests": None,
        "server_errors": None,
        "error_percent": None,
    }
    for name, *_ in FIGURES:
        facts[f"{name}_count"] = None
        facts[f"{name}_judged"] = False
    facts["errors_judged"] = facts["availability_judged"] = False
    facts["availability_scrapes"] = None
    facts.update(dict.fromkeys(("auth_p95_ms", "plugin_p95_ms", "audit_p99_ms")))

    def vector(query: str) -> list[dict]:
        return prometheus_query(base, query, now, timeout)

    def value(query: str) -> float | None:
        found = vector(query)
        return found[0]["value"] if found else None

    def judged(samples: float, kind: str) -> bool:
        return bool(facts["full_window"]) and samples >= MIN_SAMPLES[kind]

    try:
        # The window: the last day, or less on a site monitored for less (a site just
        # deployed is judged on what there is, and the detail says how long that is).
        first = value(f"min(min_over_time(timestamp(up{{{CORE}}})[{hours:g}h:1m]))")
        if first is None:
            facts["monitoring_error"] = (
                f"Prometheus at {base} has no sample of the core instances "
                f"(up{{{CORE}}}) in the last {hours:g} h: it does not scrape the core"
            )
            return facts
        # The first sample is at most a subquery step (1 min) inside the day looked at: a
        # site monitored for longer is judged on the whole day. Otherwise from a second
        # before its first sample, so that the window holds it on either edge convention.
        facts["full_window"] = now - first >= hours * 3600 - 120
        if facts["full_window"]:
            seconds, period = int(hours * 3600), f"the last {hours:g} h"
        else:
            seconds = int(max(60, now - first + 1))
            period = f"since Prometheus's first sample of the core, less than {hours:g} h ago"
        window = f"[{seconds}s]"
        facts["window_hours"], facts["period"] = round(seconds / 3600, 2), period

        # Each instance's share of the scrapes it answered: information, not judged.
        for instance in vector(f"avg_over_time(up{{{CORE}}}{window})"):
            labels = instance["metric"]
            name = labels.get("host") or labels.get("instance", "?")
            facts["instance_availability_percent"][name] = floored(instance["value"] * 100)
        # The service's availability: max over the instances at every scrape, averaged over
        # the window. The subquery's step is the scrape interval the data shows (the window
        # over the most scrapes of one instance, 1 s to 60 s): no scrape is skipped, none
        # counted twice over. Steps where Prometheus has no sample (it was stopped for
        # longer than its 5 min look-back) have no value and do not count.
        scrapes = value(f"max(count_over_time(up{{{CORE}}}{window}))") or 1
        step = int(min(60, max(1, seconds // scrapes)))
        facts["scrape_step_seconds"] = step
        service = value(f"avg_over_time({SERVICE_UP}[{seconds}s:{step}s])")
        facts["availability_percent"] = None if service is None else floored(service * 100)
        facts["availability_scrapes"] = round(scrapes)
        facts["availability_judged"] = judged(scrapes, "scrapes")

        for name, metric, labels, quantile, label, what in FIGURES:
            count = round(value(f"sum(increase({metric}_count{{{labels}}}{window}))") or 0)
            facts[f"{name}_count"] = count
            if count == 0:
                facts["not_measured"].append(f"no {what} in the window")
                continue
            found = value(
                f"histogram_quantile({quantile}, sum by (le) "
                f"(increase({metric}_bucket{{{labels}}}{window})))"
            )
            facts[f"{name}_{label}_ms"] = None if found is None else round(found * 1000, 1)
            facts[f"{name}_judged"] = judged(count, label)

        requests = round(
            value(f"sum(increase(securecore_requests_total{{{CLIENT}}}{window}))") or 0
        )
        errors = value(
            f'sum(increase(securecore_requests_total{{{CLIENT},status=~"5.."}}{window}))'
        )
        facts["requests"], facts["server_errors"] = requests, round(errors or 0)
        if requests == 0:
            facts["not_measured"].append("no client requests (/v1/...) in the window")
        else:
            # Rounded up: a share just over 1 % is never shown as 1.
            facts["error_percent"] = math.ceil(100_000 * (errors or 0) / requests) / 1000
            facts["errors_judged"] = judged(requests, "requests")
    except (OSError, ValueError, KeyError) as error:
        reason = getattr(error, "reason", None) or error
        facts["monitoring_error"] = f"Prometheus at {base} did not answer: {reason}"[:300]
        return facts
    facts["summary"] = performance_summary(facts)
    return facts


def floored(percent: float) -> float:
    """PERCENT to 3 decimals, rounded down: 99.8996 is never shown, nor judged, as 99.9."""
    return math.floor(percent * 1000) / 1000


def performance_summary(facts: dict) -> str:
    def figure(name: str, label: str, noun: str) -> str:
        count, ms = facts[f"{name}_count"], facts[f"{name}_{label}_ms"]
        if count == 0:
            what = next(w for n, *_, w in FIGURES if n == name)
            return f"{name} {label} not measured: no {what} in the window (0 {noun})"
        shown = "not found" if ms is None else f"{ms:g} ms"
        return f"{name} {label} {shown} ({count} {noun}{too_few(name, label)})"

    def too_few(name: str, label: str) -> str:
        if facts[f"{name}_judged"]:
            return ""
        if not facts["full_window"]:
            return f": not judged, {facts['window_hours']:g} h of data, judged on a whole day"
        return f": too few to judge {JUDGED[label]}, at least {MIN_SAMPLES[label]}"

    if facts["requests"] == 0:
        errors = "errors not measured: no client requests (/v1/...) in the window (0 requests)"
    else:
        errors = (
            f"errors {facts['error_percent']:g} % ({facts['server_errors']} of "
            f"{facts['requests']} client requests answered 5xx"
            f"{too_few('errors', 'requests')})"
        )
    service = facts["availability_percent"]
    instances = ", ".join(
        f"{host} {value:g} %"
        for host, value in sorted(facts["instance_availability_percent"].items())
    )
    return (
        f"window {facts['window_hours']:g} h ({facts['period']}): "
        f"{figure('auth', 'p95', 'requests')}; {figure('plugin', 'p95', 'calls')}; "
        f"{figure('audit', 'p99', 'writes')}; {errors}; "
        f"service availability {'not found' if service is None else f'{service:g} %'} "
        f"(at least one core instance up, {facts['availability_scrapes']} scrapes"
        f"{too_few('availability', 'scrapes')}; each instance, for information: {instances})"
    )


def is_backup_repository(paths: dict) -> bool:
    conf = Path(paths["pgbackrest_conf"])
    # A repository host names its own repository's path (repo1 on the primary site,
    # repo2 off it); a database node names only hosts.
    return conf.exists() and re.search(r"(?m)^repo[0-9]+-path=", read(conf)) is not None


def gather(paths: dict) -> dict:
    # _timings: seconds per part, for the benchmark (bench/compliance.py) and for
    # whoever asks why one host gathers slowly.
    facts: dict = {"_errors": {}, "_timings": {}}
    begun = time.perf_counter()

    def collect(name: str, function: Callable[..., Any], *args: Any) -> None:
        started = time.perf_counter()
        try:
            facts[name] = function(*args)
        # Any error: a part that fails is named in _errors (its checks fail on the
        # missing facts, saying why) and the others are still gathered; apt's part
        # runs in a thread, where an exception would otherwise vanish.
        except Exception as error:
            facts["_errors"][name] = f"{type(error).__name__}: {error}"[:300]
        facts["_timings"][name] = round(time.perf_counter() - started, 3)

    # What waits on other programs the longest (apt's simulated upgrade, the
    # service's own facts) runs while the rest is read.
    service: dict = {}

    def service_facts() -> None:
        started = time.perf_counter()
        try:
            service.update(securecore(paths))
        except Exception as error:  # in a thread: whatever it was must reach _errors
            facts["_errors"]["securecore"] = f"{type(error).__name__}: {error}"[:300]
        facts["_timings"]["securecore"] = round(time.perf_counter() - started, 3)

    slow = [threading.Thread(target=collect, args=("apt", apt, paths))]
    if Path(paths["securecore_config"]).exists():
        slow.append(threading.Thread(target=service_facts))
    for thread in slow:
        thread.start()
    for name, function in (
        ("system", virtualization),
        ("sshd", sshd),
        ("pam", pam),
        ("login_defs", login_defs),
        ("nftables", nftables),
        ("network", network),
        ("time", time_sync),
        ("journald", journald),
        ("auditd", auditd),
        ("aide", aide),
        ("hardening", hardening),
        ("files", world_writable),
    ):
        collect(name, function, paths)
    if is_backup_repository(paths):
        collect("database_backup", database_backup, paths)
        collect("dr_drills", dr_drills, paths)
    if Path(paths["prometheus_default"]).exists():
        collect("performance", performance, paths)
    for thread in slow:
        thread.join()
    facts.update(service)
    collect("logs", logs, paths, facts.get("journald"))
    started = time.perf_counter()
    try:
        facts["tls_policy"], facts["certificates"] = tls(paths)
    except (OSError, ValueError, KeyError, subprocess.SubprocessError) as error:
        facts["_errors"]["tls_policy"] = f"{type(error).__name__}: {error}"[:300]
    facts["_timings"]["tls_policy"] = round(time.perf_counter() - started, 3)
    facts["_tools"] = {
        tool: bool(shutil.which(tool))
        for tool in ("sshd", "nft", "auditctl", "aide", "openssl", "timedatectl")
    }
    facts["_timings"]["all"] = round(time.perf_counter() - begun, 3)
    return facts


if __name__ == "__main__":
    overrides = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    print(json.dumps(gather({**DEFAULTS, **overrides}), sort_keys=True))
