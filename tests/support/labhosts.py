"""Reach the lab hosts from tests: testinfra hosts and real traffic between them.

Hosts are reached over SSH exactly as Ansible reaches them: the lab key, the
known_hosts file that `securecore-lab up` wrote (strict host key checking),
and sudo for root.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import testinfra

from securecore_lab.spec import LabHost, LabSpec, load_spec

ROOT = Path(__file__).resolve().parents[2]
# Where site.yml puts each host's certificates, keys, CA bundle and CRL.
TLS = "/etc/securecore/tls"


def lab_spec() -> LabSpec:
    return load_spec(ROOT / "inventories" / "lab")


# One SSH connection per lab host and user, shared by every command of the checks
# (a few thousand): without it each command pays a key exchange and a login. %C
# hashes user, host and port, which keeps the socket path short; a master outlives
# its last command by a minute, so a replaced container is reached afresh.
CONTROL_PATH = Path(tempfile.gettempdir()) / "securecore-lab-ssh-%C"


def connect(spec: LabSpec, host: LabHost, user: str | None = None) -> testinfra.host.Host:
    return testinfra.get_host(
        f"ssh://{user or host.user}@127.0.0.1:{host.ssh_port}",
        ssh_identity_file=str(spec.ssh_key),
        ssh_extra_args=(
            f"-o UserKnownHostsFile={spec.known_hosts} -o StrictHostKeyChecking=yes "
            "-o IdentitiesOnly=yes -o BatchMode=yes "
            f"-o ControlMaster=auto -o ControlPersist=60s -o ControlPath={CONTROL_PATH}"
        ),
        sudo=user is None,
    )


class Listener:
    """A TCP listener on a lab host for the length of a test (at most 120 s).

    By default a plain socket that answers b"ok"; `command` runs another server
    (for example `openssl s_server`) as `user`, which must listen on 0.0.0.0:port.
    """

    def __init__(
        self,
        host: testinfra.host.Host,
        port: int,
        command: str | None = None,
        user: str = "root",
    ) -> None:
        self.host, self.port = host, port
        self.command, self.user = command, user
        self.unit = f"securecore-test-listener-{port}"

    def __enter__(self) -> Listener:
        self.host.run(f"systemctl stop {self.unit} 2>/dev/null")
        server = (
            "import socket;s=socket.socket();"
            "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
            f"s.bind(('0.0.0.0',{self.port}));s.listen(8)\n"
            "while True:\n c,_=s.accept();c.sendall(b'ok');c.close()"
        )
        command = self.command or f"python3 -c {shlex.quote(server)}"
        self.host.check_output(
            f"systemd-run --unit {self.unit} --collect -p User={self.user} timeout 120 {command}"
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.host.socket(f"tcp://0.0.0.0:{self.port}").is_listening:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"listener on port {self.port} did not start")

    def __exit__(self, *exc: object) -> None:
        self.host.run(f"systemctl stop {self.unit}")


def can_connect(
    source: testinfra.host.Host, address: str, port: int, timeout: float = 3, banner: bool = True
) -> bool:
    """Whether ``source`` opens a TCP connection to address:port and (``banner``) reads the
    test Listener's b"ok". Without ``banner`` the connection alone counts: for a port where
    a real server of the site listens (it speaks TLS, not the listener's banner)."""
    client = f"import socket;c=socket.create_connection(('{address}',{port}),timeout={timeout})"
    if banner:
        client += ";assert c.recv(2)==b'ok'"
    return source.run(f"python3 -c {shlex.quote(client)}").rc == 0


def ssh_from_controller(
    spec: LabSpec,
    host: LabHost,
    *options: str,
    user: str | None = None,
    command: str = "true",
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """An SSH login from the controller, with strict host key checking.

    ``options`` choose the authentication (e.g. ``-i KEY`` or password only).
    ``stdin`` reaches the command without appearing on any command line.
    """
    return subprocess.run(
        [
            "ssh",
            "-p",
            str(host.ssh_port),
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={spec.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
            *options,
            f"{user or host.user}@127.0.0.1",
            command,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ssh_audit_failures(host: LabHost) -> tuple[list[str], str]:
    """The '[fail]' findings of ssh-audit against a lab host, and its full report."""
    proc = subprocess.run(
        ["ssh-audit", "-n", "-p", str(host.ssh_port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return [line for line in proc.stdout.splitlines() if "-- [fail]" in line], proc.stdout


# The hosts have no curl (and no internet to get it): Python's own HTTPS client.
CLIENT = """
import http.client, json, ssl, sys
a = json.loads(sys.argv[1])
ctx = ssl.create_default_context(cafile=a["ca"])
if a.get("cert"):
    ctx.load_cert_chain(a["cert"], a["key"])
headers = {"Content-Type": "application/json", **a.get("headers", {})}
if a.get("token"):
    headers["Authorization"] = "Bearer " + a["token"]
body = json.dumps(a["body"]) if a.get("body") is not None else None
try:
    c = http.client.HTTPSConnection(a["host"], a["port"], context=ctx, timeout=20)
    c.request(a["method"], a["path"], body=body, headers=headers)
    r = c.getresponse()
    print(r.status)
    print(r.read().decode())
except Exception as e:
    print(0)
    print(json.dumps({"exception": type(e).__name__ + ": " + str(e)}))
"""


def https(
    host,
    address: str,
    method: str,
    path: str,
    *,
    client: str | None = f"{TLS}/client",
    token: str | None = None,
    body: dict | None = None,
    headers: dict[str, str] | None = None,
    port: int = 8443,
) -> tuple[int, object]:
    """(status, JSON answer) of a request from HOST; status 0 if no HTTP answer came.
    PORT: the core service's by default (443: the DMZ edge's)."""
    request = {
        "host": address,
        "port": port,
        "headers": headers or {},
        "ca": f"{TLS}/ca.pem",
        "method": method,
        "path": path,
        "token": token,
        "body": body,
    }
    if client:
        request.update(cert=f"{client}.pem", key=f"{client}.key")
    out = host.check_output(f"python3 -c {shlex.quote(CLIENT)} {shlex.quote(json.dumps(request))}")
    status, _, payload = out.partition("\n")
    return int(status), json.loads(payload) if payload.strip() else None
