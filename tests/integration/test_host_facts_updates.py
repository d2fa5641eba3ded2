"""The fact script's security updates and virtualization, for real: apt-get and
apt-config of this machine read package lists, a dpkg status and sources of the test's
own (apt's Dir:: options), and the script keeps its state file in a directory of the
test's; then the checks that read those facts (REQ-HARD-12, REQ-COMP-17)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from compliance.catalog import load_catalogs
from compliance.checks import load_checks
from compliance.engine import run_checks
from compliance.gather.runner import HostFacts
from compliance.rules import evaluate
from tests.support.commands import ROOT, needs

SCRIPT = ROOT / "compliance" / "gather" / "host_facts.py"
SECURITY = "example.org_debian-security_dists_bookworm-security"
MAIN = "example.org_debian_dists_bookworm"
HOUR = 3600


def release(label: str, suite: str, codename: str) -> str:
    return (
        f"Origin: Debian\nLabel: {label}\nSuite: {suite}\nCodename: {codename}\n"
        "Date: Sat, 05 Dec 2026 00:00:00 UTC\nArchitectures: amd64\nComponents: main\n"
    )


def packages(*entries: tuple[str, str]) -> str:
    return "".join(
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
        f"Maintainer: t <t@example.org>\nFilename: pool/main/{name}_{version}_amd64.deb\n"
        "Size: 100\nDescription: test\n\n"
        for name, version in entries
    )


def installed(*entries: tuple[str, str]) -> str:
    return "".join(
        f"Package: {name}\nStatus: install ok installed\nVersion: {version}\n"
        "Architecture: amd64\nMaintainer: t <t@example.org>\nDescription: test\n\n"
        for name, version in entries
    )


class Apt:
    """apt's state of a host of the test's own, under ROOT: lists, dpkg status, sources."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "var-lib-apt"
        self.lists = self.state / "lists"
        (self.lists / "partial").mkdir(parents=True)
        (root / "sources.list.d").mkdir()
        (root / "sources.list").write_text(
            "deb http://example.org/debian bookworm main\n"
            "deb http://example.org/debian-security bookworm-security main\n"
        )
        self.status = root / "status"
        self.install(("sc-openssl", "3.0.1-1"), ("sc-zlib", "1.2-1"), ("sc-tool", "1.0-1"))
        self.state_file = root / "compliance" / "security-updates.json"
        # apt's package cache for these lists: a directory of the test's, never the
        # machine's (the script runs apt as root here unless it drops to apt_user).
        self.cache = root / "cache"
        self.cache.mkdir(mode=0o755)

    def install(self, *entries: tuple[str, str]) -> None:
        self.status.write_text(installed(*entries))

    def fetched(self, hours_ago: float, security: list[tuple[str, str]]) -> None:
        """The lists as `apt-get update` leaves them, dated HOURS_AGO."""
        files = {
            f"{MAIN}_Release": release("Debian", "stable", "bookworm"),
            f"{MAIN}_main_binary-amd64_Packages": packages(("sc-tool", "1.1-1")),
            f"{SECURITY}_InRelease": release(
                "Debian-Security", "stable-security", "bookworm-security"
            ),
            f"{SECURITY}_main_binary-amd64_Packages": packages(*security),
        }
        when = time.time() - hours_ago * HOUR
        for name, text in files.items():
            path = self.lists / name
            path.write_text(text)
            os.utime(path, (when, when))

    def options(self) -> list[str]:
        """apt's -o options that make it use this host's files."""
        return [part for option in self._options() for part in ("-o", option)]

    def facts(self, **extra: object) -> dict:
        overrides = {
            "apt_options": self.options(),
            "apt_state": str(self.state_file),
            # pytest's directories are its user's alone: apt as another user could
            # not read them (the drop is tested on a directory of its own, below).
            "apt_user": None,
            "writable_roots": [],  # not what these tests are about, and it takes seconds
            **extra,
        }
        command = [sys.executable, str(SCRIPT), json.dumps(overrides)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
        facts = json.loads(done.stdout)
        assert "apt" not in facts["_errors"], facts["_errors"]
        return facts

    def _options(self) -> list[str]:
        return [
            f"Dir::State={self.state}",
            f"Dir::State::status={self.status}",
            f"Dir::Etc::SourceList={self.root / 'sources.list'}",
            f"Dir::Etc::SourceParts={self.root / 'sources.list.d'}",
            f"Dir::Cache::pkgcache={self.cache / 'pkgcache.bin'}",
            f"Dir::Cache::srcpkgcache={self.cache / 'srcpkgcache.bin'}",
        ]

    def age(self, key: str, hours: float) -> None:
        """As if this host had seen KEY pending for HOURS already."""
        state = json.loads(self.state_file.read_text())
        state["first_seen"][key] = time.time() - hours * HOUR
        self.state_file.write_text(json.dumps(state))


@pytest.fixture
def apt(tmp_path: Path) -> Apt:
    needs("apt-get", "apt-config")
    return Apt(tmp_path)


@pytest.fixture(scope="module")
def checks():
    return {c.id: c for c in load_checks(load_catalogs())}


def verdict(checks, facts: dict) -> tuple[bool, str]:
    outcome = evaluate(checks["patches.security_updates"].rule, facts)
    return outcome.passed, outcome.detail


def test_without_package_lists_nothing_pending_proves_nothing(apt: Apt, checks) -> None:
    facts = apt.facts()
    assert facts["apt"]["pending_security_updates"] == 0
    assert facts["apt"]["lists_age_hours"] is None and facts["apt"]["security_lists"] == []
    passed, detail = verdict(checks, facts)
    assert not passed and "apt.lists_age_hours: not found" in detail
    assert not apt.state_file.parent.exists()  # nothing to remember: nothing written
    # The security suite's lists are what count: the main suite's alone prove nothing.
    apt.fetched(1, [])
    (apt.lists / f"{SECURITY}_InRelease").unlink()
    assert apt.facts()["apt"]["lists_age_hours"] is None


def test_lists_older_than_a_day_fail_and_apt_s_update_stamp_counts(apt: Apt, checks) -> None:
    apt.fetched(30, [])
    facts = apt.facts(security_update_class="high")
    assert 29.9 <= facts["apt"]["lists_age_hours"] <= 30.1
    passed, detail = verdict(checks, facts)
    assert not passed and "(at_most 26)" in detail
    # apt's Release files carry the server's date; the periodic job's stamp says when
    # the last `apt-get update` succeeded.
    stamp = apt.state / "periodic" / "update-stamp"
    stamp.parent.mkdir()
    stamp.touch()
    facts = apt.facts()
    assert facts["apt"]["lists_age_hours"] <= 0.1
    assert facts["apt"]["lists_newest"] == str(stamp)
    assert verdict(checks, facts)[0] == facts["apt"]["unattended_upgrades"]


def test_a_security_update_fails_once_it_waited_past_its_deadline(apt: Apt, checks) -> None:
    apt.fetched(1, [("sc-openssl", "3.0.1-2"), ("sc-zlib", "1.2-2")])
    facts = apt.facts()["apt"]
    # Only the security suite's updates, each dated from the first time it was seen.
    assert facts["pending_updates"] == 3 and facts["security_packages"] == ["sc-openssl", "sc-zlib"]
    assert [
        (u["package"], u["version"], u["class"], u["sla_hours"]) for u in facts["security_updates"]
    ] == [
        ("sc-openssl", "3.0.1-2", "high", 168),
        ("sc-zlib", "1.2-2", "high", 168),
    ]
    assert all(u["age_hours"] == 0 for u in facts["security_updates"])
    assert facts["overdue_security_updates"] == []  # fresh: not yet a failure
    # The state file: root's alone, and only it.
    assert apt.state_file.stat().st_mode & 0o777 == 0o600
    assert apt.state_file.parent.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in apt.state_file.parent.iterdir()) == ["security-updates.json"]
    first = json.loads(apt.state_file.read_text())["first_seen"]
    assert sorted(first) == ["sc-openssl=3.0.1-2", "sc-zlib=1.2-2"]
    assert (
        apt.facts()["apt"]["security_updates"][0]["first_seen"]
        == datetime.datetime.fromtimestamp(first["sc-openssl=3.0.1-2"], datetime.UTC).isoformat()
    )  # seen again: still dated from the first time

    apt.age("sc-openssl=3.0.1-2", 170)
    facts = apt.facts()
    overdue = facts["apt"]["overdue_security_updates"]
    assert [(u["package"], u["version"], u["class"], u["sla_hours"]) for u in overdue] == [
        ("sc-openssl", "3.0.1-2", "high", 168)
    ]
    assert 169.9 <= overdue[0]["age_hours"] <= 170.1
    passed, detail = verdict(checks, facts)
    assert not passed and "'package': 'sc-openssl'" in detail and "'version': '3.0.1-2'" in detail
    # A critical one has a day: the deadline follows the class.
    assert apt.facts(security_update_class="critical")["apt"]["overdue_security_updates"][1:] == []
    apt.age("sc-zlib=1.2-2", 25)
    critical = apt.facts(security_update_class="critical")["apt"]["overdue_security_updates"]
    assert [u["package"] for u in critical] == ["sc-openssl", "sc-zlib"]

    # A newer fix replaces the pending one: the host has still waited since the first.
    apt.fetched(1, [("sc-openssl", "3.0.1-3"), ("sc-zlib", "1.2-2")])
    overdue = apt.facts()["apt"]["overdue_security_updates"]
    assert [(u["package"], u["version"]) for u in overdue] == [("sc-openssl", "3.0.1-3")]
    # Applied: no longer pending, and forgotten.
    apt.install(("sc-openssl", "3.0.1-3"), ("sc-zlib", "1.2-2"), ("sc-tool", "1.0-1"))
    facts = apt.facts()
    assert facts["apt"]["pending_security_updates"] == 0
    assert json.loads(apt.state_file.read_text())["first_seen"] == {}
    # Lists gone (nothing known to be applied): what was seen is kept.
    apt.install(("sc-openssl", "3.0.1-1"), ("sc-zlib", "1.2-2"), ("sc-tool", "1.0-1"))
    apt.facts()
    apt.age("sc-openssl=3.0.1-3", 200)
    shutil.rmtree(apt.lists)
    (apt.lists / "partial").mkdir(parents=True)
    apt.facts()
    assert list(json.loads(apt.state_file.read_text())["first_seen"]) == ["sc-openssl=3.0.1-3"]


def test_without_its_state_no_deadline_is_judged(apt: Apt, checks) -> None:
    apt.fetched(1, [("sc-openssl", "3.0.1-2")])
    apt.state_file.parent.mkdir(mode=0o777)
    apt.state_file.parent.chmod(0o777)  # others could age or clear an update
    facts = apt.facts()
    assert facts["apt"]["overdue_security_updates"] is None
    assert "not a directory only this user may write" in facts["apt"]["security_update_state"]
    passed, detail = verdict(checks, facts)
    assert not passed and "apt.overdue_security_updates: not found" in detail
    apt.state_file.parent.chmod(0o700)
    apt.state_file.write_text("[1, 2]")
    assert apt.facts()["apt"]["overdue_security_updates"] is None
    apt.state_file.unlink()
    apt.state_file.symlink_to(apt.root / "elsewhere.json")
    (apt.root / "elsewhere.json").write_text('{"first_seen": {}}')
    assert apt.facts()["apt"]["overdue_security_updates"] is None  # never through a link


def test_the_host_says_whether_it_is_a_container_and_the_clock_check_follows(
    tmp_path: Path, checks
) -> None:
    # Its own state file: this machine's apt may have security updates pending.
    quick = {"apt_state": str(tmp_path / "state.json"), "writable_roots": []}
    facts = json.loads(
        subprocess.run(
            [sys.executable, str(SCRIPT), json.dumps(quick)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    )
    if shutil.which("systemd-detect-virt"):
        answer = subprocess.run(
            ["systemd-detect-virt", "--container"], capture_output=True, text=True, check=False
        ).stdout.strip()
        assert facts["system"]["container"] == (answer != "none")
        assert facts["system"]["container_type"] == (None if answer == "none" else answer)
    # Without systemd's tool: the file the container manager left.
    marker = tmp_path / "container"
    marker.write_text("podman\n")
    overrides = {**quick, "detect_virt": "", "container_markers": {str(marker): None}}
    command = [sys.executable, str(SCRIPT), json.dumps(overrides)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    inside = json.loads(done.stdout)
    assert inside["system"] == {
        "container": True,
        "container_type": "podman",
        "vm": None,
        "source": str(marker),
    }
    marker.unlink()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    outside = json.loads(done.stdout)
    assert outside["system"]["container"] is False
    clock = checks["time.synchronized"]
    for gathered in (inside, outside):
        gathered["time"] = {"synchronized": False}
    [lab, machine] = run_checks(
        [clock], [HostFacts("lab", [], inside), HostFacts("metal", [], outside)], []
    )
    assert lab.status == "not_applicable" and "container_type" not in lab.detail
    assert "system.container = True" in lab.detail
    assert machine.status == "fail"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_apt_runs_as_nobody_and_writes_no_cache(checks) -> None:
    """apt takes no lock here (the host's own apt may be running), so it must write
    nothing: run as root it writes a package cache for lists newer than the cache; as
    the unprivileged apt_user it cannot, and builds one in memory, with the same
    answer. Fails when the script runs apt as root."""
    # Readable by nobody, unlike pytest's directories; removed at the end.
    root = Path(tempfile.mkdtemp(prefix="facts-apt-"))
    try:
        root.chmod(0o755)
        apt = Apt(root)
        apt.fetched(1, [("sc-openssl", "3.0.1-2")])
        facts = apt.facts(apt_user="nobody")["apt"]
        assert facts["security_packages"] == ["sc-openssl"], facts
        assert list(apt.cache.iterdir()) == []
        # Run by root itself (apt-get update does this), apt writes its cache ...
        subprocess.run(["apt-cache", *apt.options(), "gencaches"], check=True)
        cache = apt.cache / "pkgcache.bin"
        written = cache.stat().st_mtime_ns
        # ... which nobody reads, and leaves as it is.
        assert apt.facts(apt_user="nobody")["apt"]["security_packages"] == ["sc-openssl"]
        assert cache.stat().st_mtime_ns == written
        # Lists newer than the cache: nobody sees the new update all the same (apt
        # builds a cache in memory), and still writes nothing.
        apt.fetched(0, [("sc-openssl", "3.0.1-2"), ("sc-zlib", "1.2-2")])
        facts = apt.facts(apt_user="nobody")["apt"]
        assert facts["security_packages"] == ["sc-openssl", "sc-zlib"], facts
        assert cache.stat().st_mtime_ns == written
        # Nor does the script run as root without the drop: apt is told to keep
        # its cache in memory (it would write it here otherwise).
        assert apt.facts()["apt"]["security_packages"] == ["sc-openssl", "sc-zlib"]
        assert cache.stat().st_mtime_ns == written
    finally:
        shutil.rmtree(root)
