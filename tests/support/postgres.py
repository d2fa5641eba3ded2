"""A real PostgreSQL server for tests: initdb in a temporary directory, a Unix socket only.

PostgreSQL refuses to run as root, so the server runs as the `postgres`
system user that Debian's package creates. Nothing listens on TCP.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def postgres_bin() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


def _as_postgres(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def pg_ctl_start(binaries: Path, data: Path, log: Path, options: str) -> None:
    """Start the cluster in DATA (as postgres) with the server OPTIONS; fail with its log."""
    started = _as_postgres(
        str(binaries / "pg_ctl"), "-D", str(data), "-w", "-l", str(log), "-o", options, "start"
    )
    assert started.returncode == 0, started.stderr + (log.read_text() if log.exists() else "")


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a DSN for a fresh database on a private server; stop and remove it afterwards."""
    binaries = postgres_bin()
    if binaries is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL is not installed (scripts/bootstrap.sh installs it)")
    base = Path(tempfile.mkdtemp(prefix="securecore-pg-"))
    base.chmod(0o755)
    shutil.chown(base, "postgres", "postgres")
    data, sockets = base / "data", base / "run"
    try:
        made = _as_postgres(
            str(binaries / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"
        )
        assert made.returncode == 0, made.stderr
        _as_postgres("mkdir", "-m", "0700", str(sockets))
        pg_ctl_start(
            binaries, data, base / "server.log", f"-k {sockets} -c listen_addresses='' -c fsync=on"
        )
        created = _as_postgres(str(binaries / "createdb"), "-h", str(sockets), "securecore")
        assert created.returncode == 0, created.stderr
        yield f"host={sockets} dbname=securecore user=postgres"
    finally:
        if binaries is not None:
            _as_postgres(str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(dsn: str, name: str) -> str:
    """A new empty database on the server of DSN; its DSN."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return dsn.replace("dbname=securecore", f"dbname={name}")
