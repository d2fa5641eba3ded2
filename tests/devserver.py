"""`securecore serve` on a fresh development setup, for tests that need a real TLS peer."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.test_audit_cli import securecore_lab


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, seconds: float = 20) -> bool:
    """Whether something accepts connections on 127.0.0.1:PORT within SECONDS."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


@contextmanager
def dev_server(
    directory: Path,
    policy: str | None = None,
    workers: int = 1,
    edit_config: Callable[[str], str] = lambda text: text,
) -> Iterator[dict]:
    """Yield {"port", "tls", "config", "process", "log"} of a running server; stop it afterwards.

    `policy`: the text of a policy file ([acl], [client_limit], ...) to serve with.
    `workers`: worker processes (more than one: a supervisor and its workers).
    `edit_config`: changes the generated config's text (e.g. to PostgreSQL).
    """
    securecore_lab("init", str(directory), "--software-keys")
    port = free_port()
    config = directory / "config.toml"
    text = config.read_text().replace("127.0.0.1:8443", f"127.0.0.1:{port}")
    if policy is not None:
        (directory / "policy.toml").write_text(policy)
        text += '\n[policy]\nfile = "policy.toml"\n'
    config.write_text(edit_config(text))
    # Logs go to a file: a pipe that nobody reads would fill and stall the server.
    log_path = directory / "server.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "securecore", "serve", "-c", str(config),
         "--workers", str(workers)],
        stdout=subprocess.DEVNULL, stderr=log, text=True,
    )  # fmt: skip
    if not wait_for_port(port):
        process.kill()
        pytest.fail(f"the server did not start: {log_path.read_text()}")
    try:
        yield {"port": port, "tls": directory / "tls", "config": config, "process": process,
               "log": log_path}  # fmt: skip
    finally:
        if process.poll() is None:
            process.terminate()  # a supervisor stops its workers before it ends
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
