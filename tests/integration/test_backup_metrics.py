"""roles/postgresql_backup's securecore-backup-metrics against a real pgBackRest
repository of a real PostgreSQL (Debian's packages): what it writes to node_exporter's
textfile directory is the repository's newest full backup, in a valid textfile, through
a fresh staging name (a link planted at a predictable name is not followed), and a
failure (of the backup or of the read) leaves the last success's time in place."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.commands import ROOT
from tests.support.monitoring import tool
from tests.support.postgres import pg_ctl_start, postgres_bin

WRITER = ROOT / "roles/postgresql_backup/files/securecore-backup-metrics"
STANZA = "securecore"
SERIES = re.compile(r'^(securecore_backup_[a-z_]+)\{backup="pgbackrest",repo="repo1"\} (\d+)$')


def as_postgres(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
    )


@dataclass
class Site:
    base: Path
    config: Path
    data: Path
    binaries: Path
    pgbackrest: str
    textfiles: Path

    def pgbackrest_run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return as_postgres(self.pgbackrest, f"--config={self.config}", f"--stanza={STANZA}", *args)

    def stop_postgres(self) -> None:
        as_postgres(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def write(self, *extra: str, stanza: str = STANZA) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                str(WRITER),
                f"--stanza={stanza}",
                "--repo=1",
                "--user=postgres",
                f"--config={self.config}",
                f"--pgbackrest={self.pgbackrest}",
                f"--output={self.textfiles / 'securecore_backup_pgbackrest.prom'}",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """PostgreSQL archiving to a local pgBackRest repository (repo1), its stanza, and one
    full backup; node_exporter's textfile directory as the roles make it (root, 1775)."""
    binaries, pgbackrest = postgres_bin(), shutil.which("pgbackrest")
    if binaries is None or pgbackrest is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL and pgBackRest are not installed (apt-get install pgbackrest)")
    if os.geteuid() != 0:
        pytest.skip("the writer runs pgbackrest as postgres: root only")
    base = Path(tempfile.mkdtemp(prefix="securecore-pgbr-"))
    base.chmod(0o755)
    for name in ("repo", "log", "lock", "run"):
        (base / name).mkdir(mode=0o700)
        shutil.chown(base / name, "postgres", "postgres")
    textfiles = base / "textfiles"
    textfiles.mkdir()
    textfiles.chmod(0o1775)
    config = base / "pgbackrest.conf"
    data = base / "data"
    config.write_text(
        "[global]\n"
        f"repo1-path={base / 'repo'}\nlog-path={base / 'log'}\nlock-path={base / 'lock'}\n"
        "repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=a-test-passphrase-of-length\n"
        "start-fast=y\nlog-level-console=warn\ncompress-type=zst\n"
        f"[{STANZA}]\npg1-path={data}\npg1-socket-path={base / 'run'}\n"
    )
    config.chmod(0o644)
    shutil.chown(base, "postgres", "postgres")
    test_site = Site(base, config, data, binaries, pgbackrest, textfiles)
    try:
        made = as_postgres(
            str(binaries / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"
        )
        assert made.returncode == 0, made.stderr
        archive = f"{pgbackrest} --config={config} --stanza={STANZA} archive-push %p"
        pg_ctl_start(
            binaries,
            data,
            base / "server.log",
            f"-k {base / 'run'} -c listen_addresses='' -c archive_mode=on "
            f"-c archive_command='{archive}' -c wal_level=replica",
        )
        for step in (["stanza-create"], ["check"], ["--type=full", "backup"]):
            done = test_site.pgbackrest_run(*step)
            assert done.returncode == 0, f"{step}: {done.stdout}{done.stderr}"
        yield test_site
    finally:
        test_site.stop_postgres()
        shutil.rmtree(base, ignore_errors=True)


def newest_full(site: Site) -> dict:
    done = site.pgbackrest_run("--repo=1", "--output=json", "info")
    assert done.returncode == 0, done.stderr
    (stanza,) = json.loads(done.stdout)
    return max(
        (b for b in stanza["backup"] if b["type"] == "full"), key=lambda b: b["timestamp"]["stop"]
    )


def values(path: Path) -> dict[str, int]:
    found = {}
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        match = SERIES.match(line)
        assert match, f"unexpected line {line!r}"
        found[match[1]] = int(match[2])
    return found


def test_the_textfile_holds_the_repositorys_newest_full_backup(site: Site) -> None:
    """Written through a new staging name: a link planted at the file's name is replaced,
    not followed; nothing is left beside the file; the file is a valid textfile."""
    victim = site.base / "victim"
    victim.write_text("untouched\n")
    output = site.textfiles / "securecore_backup_pgbackrest.prom"
    output.unlink(missing_ok=True)
    output.symlink_to(victim)
    for guess in (
        ".securecore_backup_pgbackrest.prom.tmp",
        "securecore_backup_pgbackrest.prom.partial",
    ):
        (site.textfiles / guess).symlink_to(victim)
    done = site.write()
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "untouched\n"
    assert output.is_file() and not output.is_symlink()
    assert oct(output.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in site.textfiles.iterdir()) == sorted(
        [
            output.name,
            ".securecore_backup_pgbackrest.prom.tmp",
            "securecore_backup_pgbackrest.prom.partial",
        ]
    )
    newest = newest_full(site)
    assert values(output) == {
        "securecore_backup_last_success_timestamp_seconds": newest["timestamp"]["stop"],
        "securecore_backup_last_duration_seconds": newest["timestamp"]["stop"]
        - newest["timestamp"]["start"],
        "securecore_backup_last_size_bytes": newest["info"]["repository"]["delta"],
    }
    assert time.time() - 600 < newest["timestamp"]["stop"] <= time.time()
    assert newest["info"]["repository"]["delta"] > 0
    with output.open() as metrics:
        checked = subprocess.run(
            [tool("promtool"), "check", "metrics"],
            stdin=metrics,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_failed_backup_or_read_keeps_the_last_success(site: Site) -> None:
    """The backup fails (the database is down): the repository's newest full backup is
    still the last success's, and so is the file; a read that fails (pgBackRest exits
    non-zero) leaves the file byte for byte and exits 1."""
    assert site.write().returncode == 0
    output = site.textfiles / "securecore_backup_pgbackrest.prom"
    before = output.read_bytes()
    site.stop_postgres()
    failed = site.pgbackrest_run("--type=full", "backup")
    assert failed.returncode != 0
    time.sleep(1)
    assert site.write().returncode == 0
    assert output.read_bytes() == before
    unreadable = site.write(stanza="no-such-stanza")
    assert unreadable.returncode == 1
    assert "left as it was" in unreadable.stderr
    assert output.read_bytes() == before
    assert [
        p.name
        for p in site.textfiles.iterdir()
        if p.name.startswith(".securecore_backup_pgbackrest.prom.")
    ] == [".securecore_backup_pgbackrest.prom.tmp"]
