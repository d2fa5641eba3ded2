"""`securecore serve` on a fresh development setup, for tests that need a real TLS peer,
and the clients, admin commands and plugin processes that talk to it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securecore_lab.devsetup import development_ca, issue_development_leaf
from tests.support.commands import securecore, securecore_lab


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

    `policy`: the text of a policy file ([acl], [client_limit], ...) to serve with
    (JSON when it starts with "{", else TOML).
    `workers`: worker processes (more than one: a supervisor and its workers).
    `edit_config`: changes the generated config's text (e.g. to PostgreSQL).
    """
    securecore_lab("init", str(directory), "--software-keys")
    port = free_port()
    config = directory / "config.toml"
    text = config.read_text().replace("127.0.0.1:8443", f"127.0.0.1:{port}")
    if policy is not None:
        # JSON as roles/securecore writes it, TOML as an operator writes it by hand.
        name = "policy.json" if policy.lstrip().startswith("{") else "policy.toml"
        (directory / name).write_text(policy)
        text += f'\n[policy]\nfile = "{name}"\n'
    config.write_text(edit_config(text))
    # Logs go to a file: a pipe that nobody reads would fill and stall the server.
    log_path = directory / "server.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "securecore", "serve", "-c", str(config), "--workers", str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    if not wait_for_port(port):
        process.kill()
        pytest.fail(f"the server did not start: {log_path.read_text()}")
    try:
        yield {
            "port": port,
            "tls": directory / "tls",
            "config": config,
            "process": process,
            "log": log_path,
        }
    finally:
        if process.poll() is None:
            process.terminate()  # a supervisor stops its workers before it ends
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def context(tls: Path, *, client: str | None = "admin", maximum=ssl.TLSVersion.TLSv1_3):
    ctx = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    ctx.maximum_version = maximum
    if client:
        ctx.load_cert_chain(str(tls / f"{client}.pem"), str(tls / f"{client}.key"))
    return ctx


def get(server, path: str, headers=None, **options) -> tuple[int, dict]:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server["port"], context=context(server["tls"], **options), timeout=10
    )
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def call(server, method: str, path: str, *, token=None, body=None, client="admin", source=None):
    connection = http.client.HTTPSConnection(
        "127.0.0.1",
        server["port"],
        context=context(server["tls"], client=client),
        timeout=10,
        source_address=(source, 0) if source else None,
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    payload = json.dumps(body).encode() if body is not None else None
    if payload is not None:
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        connection.close()


def scrape(server) -> tuple[http.client.HTTPResponse, str]:
    """GET /metrics with the admin certificate: the response and its text."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server["port"], context=context(server["tls"]), timeout=10
    )
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return response, text


def admin(server, *args: str, check: bool = True):
    return securecore(*args, "-c", str(server["config"]), check=check)


def with_certificate(server, name: str) -> str:
    """A TLS policy file like the server's, presenting tls/NAME.pem as the client."""
    tls = server["tls"]
    policy = json.loads((tls / "policy.json").read_text())
    policy.update(client_certificate=str(tls / f"{name}.pem"), client_key=str(tls / f"{name}.key"))
    path = server["config"].parent / f"policy-{name}.json"
    path.write_text(json.dumps(policy))
    return str(path)


def whoami(server, path: str = "/v1/whoami") -> http.client.HTTPResponse:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server["port"], context=context(server["tls"]), timeout=10
    )
    connection.request("GET", path)
    response = connection.getresponse()
    response.body = json.loads(response.read())
    connection.close()
    return response


def plugin_log(server, port: int) -> Path:
    return server["config"].parent / f"plugin-{port}.log"


@contextlib.contextmanager
def plugin_process(server, command: list[str], port: int):
    log = plugin_log(server, port).open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for_port(port), f"the plugin did not start: {command}"
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=20)
        log.close()


def ticket_store_command(tls: Path, state_dir: Path, port: int) -> list[str]:
    """The reference plugin's command line, serving on PORT with the dev setup's TLS files."""
    return [
        sys.executable,
        "-m",
        "securecore",
        "plugin",
        "ticket-store",
        "--name",
        "example",
        "--tls-policy",
        str(tls / "plugin-policy.json"),
        "--state-dir",
        str(state_dir),
        "--listen",
        f"127.0.0.1:{port}",
        "--core-principal",
        "core/localhost",
    ]


def ticket_store(server, port: int):
    tls, base = server["tls"], server["config"].parent
    return plugin_process(server, ticket_store_command(tls, base / "tickets", port), port)


def plugin_call(server, token: str, op: str, args: dict) -> tuple[int, dict]:
    return call(
        server, "POST", "/v1/plugins/example/call", token=token, body={"op": op, "args": args}
    )


def file_serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def roll_over(tls: Path, *names: str) -> None:
    """A second CA joins the bundle and issues NAMES again (keys made anew)."""
    ca, ca_key = development_ca("SecureCore Development CA 2")
    with (tls / "ca.pem").open("ab") as bundle:
        bundle.write(ca.public_bytes(serialization.Encoding.PEM))
    for name in names:
        issue_development_leaf(tls, name, ca, ca_key)


def reload_and_wait(server, what: str, count: int = 1, pid: int | None = None) -> None:
    os.kill(pid or server["process"].pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server["log"].read_text().count(what) >= count:
            return
        time.sleep(0.1)
    pytest.fail(f"no {what!r} in the log: {server['log'].read_text()[-2000:]}")
