"""roles/monitoring's Alertmanager configuration in the real Alertmanager (0.25, from the
pinned Debian package) on loopback, started with the ARGS of the rendered
/etc/default/prometheus-alertmanager and the credential the role's script makes: its
API refuses whoever lacks the password (REQ-MON-11), and alerts posted to its API (v2)
reach a local webhook receiver routed by severity, grouped by alert name, with an
outage's consequences held back (inhibition), and are sent again when resolved
(REQ-MON-7)."""

from __future__ import annotations

import base64
import datetime
import grp
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.commands import ROOT
from tests.support.devserver import free_port, wait_for_port
from tests.support.monitoring import render_monitoring, stop, tool

WAIT_SECONDS = 30


class Receiver:
    """A webhook receiver on loopback that keeps every notification it is sent."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate: Any, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if predicate(self.notifications):
                return self.notifications
            time.sleep(0.2)
        pytest.fail(f"{what}: not within {WAIT_SECONDS} s; received {self.notifications}")


CREDENTIAL = ROOT / "roles/monitoring/files/securecore-alertmanager-credential"


def rendered_args(directory: Path) -> list[str]:
    """The ARGS of the rendered /etc/default/prometheus-alertmanager (Debian's unit
    starts `prometheus-alertmanager $ARGS`)."""
    for line in (directory / "prometheus-alertmanager.default").read_text().splitlines():
        if line.startswith("ARGS="):
            return shlex.split(shlex.split(line.removeprefix("ARGS="))[0])
    raise AssertionError("no ARGS in the rendered defaults")


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Receiver]]:
    receiver = Receiver()
    port = free_port()
    directory = tmp_path_factory.mktemp("alertmanager")
    render_monitoring(
        directory,
        monitoring_webhook_url=receiver.url,
        monitoring_config_dir=str(directory),
        monitoring_alertmanager_port=port,
        # The role's timings, shortened so that the test waits seconds.
        monitoring_group_wait="1s",
        monitoring_group_interval="2s",
        monitoring_resolve_timeout="1m",
    )
    # The role's script makes the password and the web configuration, as on the host
    # (the group: this user's own).
    made = subprocess.run(
        [
            sys.executable,
            str(CREDENTIAL),
            str(directory / "alertmanager.password"),
            str(directory / "alertmanager-web.yml"),
            "prometheus",
            grp.getgrgid(os.getgid()).gr_name,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert made.stdout.strip() == "changed"
    args = rendered_args(directory)
    assert f"--web.config.file={directory / 'alertmanager-web.yml'}" in args
    assert "--cluster.listen-address=" in args  # no gossip port: one Alertmanager
    process = subprocess.Popen(
        [tool("prometheus-alertmanager"), *args, f"--storage.path={directory / 'data'}"],
        stdout=subprocess.DEVNULL,
        stderr=(directory / "alertmanager.log").open("w"),
    )
    try:
        assert wait_for_port(port, WAIT_SECONDS), (directory / "alertmanager.log").read_text()
        PASSWORD.append((directory / "alertmanager.password").read_text().strip())
        yield f"http://127.0.0.1:{port}", receiver
    finally:
        stop(process)
        receiver.server.shutdown()


# The password the fixture's Alertmanager was given (the role's script made it).
PASSWORD: list[str] = []


def request(
    base: str, path: str, body: object, *, authenticated: bool = True, method: str = "POST"
) -> tuple[int, bytes]:
    """The status and body of Alertmanager's answer, with Prometheus's credential or none."""
    headers = {"Content-Type": "application/json"}
    if authenticated:
        token = base64.b64encode(f"prometheus:{PASSWORD[-1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    # BASE is the test's own http://127.0.0.1 URL.
    sent = urllib.request.Request(  # noqa: S310
        f"{base}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers=headers,
    )
    try:
        with urllib.request.urlopen(sent, timeout=10) as answer:  # noqa: S310
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post(base: str, alerts: list[dict[str, Any]]) -> None:
    status, body = request(base, "/api/v2/alerts", alerts)
    assert status == 200, body


def alert(name: str, severity: str, host: str, ends: str | None = None, **labels: str) -> dict:
    body: dict[str, Any] = {
        "labels": {"alertname": name, "severity": severity, "host": host, **labels},
        "annotations": {"summary": f"{name} on {host}"},
    }
    if ends:
        body["endsAt"] = ends
    return body


# core-01 is down as a whole (HostDown): its service and intrusion alerts are held back.
# On core-02 the service is down: its latency alert is held back, not its intrusion
# responses, which arrive as one notification (one group per alert name).
OUTAGE = [
    ("HostDown", "critical", "core-01", {}),
    ("SecureCoreDown", "critical", "core-01", {}),
    ("SecureCoreIntrusionResponse", "warning", "core-01", {"action": "lock_principal"}),
    ("SecureCoreDown", "critical", "core-02", {}),
    ("SecureCoreAuthLatencyHigh", "warning", "core-02", {}),
    ("SecureCoreIntrusionResponse", "warning", "core-02", {"action": "lock_principal"}),
    ("SecureCoreIntrusionResponse", "warning", "core-02", {"action": "end_session"}),
    ("SecureCorePluginRegistered", "info", "core-02", {}),
]


def delivered(notifications: list[dict[str, Any]], status: str) -> dict[str, dict]:
    """alertname -> {receiver, hosts (with the action where there is one)} of the
    notifications of STATUS."""
    found: dict[str, dict] = {}
    for note in notifications:
        for item in note["alerts"]:
            if item["status"] != status:
                continue
            entry = found.setdefault(
                item["labels"]["alertname"], {"receiver": note["receiver"], "alerts": set()}
            )
            entry["alerts"].add((item["labels"]["host"], item["labels"].get("action", "")))
    return found


EXPECTED = {
    "HostDown": {"receiver": "securecore-critical", "alerts": {("core-01", "")}},
    "SecureCoreDown": {"receiver": "securecore-critical", "alerts": {("core-02", "")}},
    "SecureCoreIntrusionResponse": {
        "receiver": "securecore-warning",
        "alerts": {("core-02", "lock_principal"), ("core-02", "end_session")},
    },
    "SecureCorePluginRegistered": {"receiver": "securecore-info", "alerts": {("core-02", "")}},
}


def fire(base: str, receiver: Receiver) -> None:
    """The outage posted and its groups delivered (again: a worker of pytest-xdist that
    runs the resolution's test alone has its own Alertmanager, which saw no outage)."""
    post(base, [alert(n, s, h, **labels) for n, s, h, labels in OUTAGE])
    receiver.wait_for(
        lambda notes: delivered(notes, "firing").keys() >= EXPECTED.keys(),
        "every expected group delivered",
    )


def test_an_outage_is_routed_by_severity_grouped_and_its_consequences_held_back(
    alertmanager: tuple[str, Receiver],
) -> None:
    base, receiver = alertmanager
    fire(base, receiver)
    time.sleep(3)  # a group interval more: anything held back would have come by now
    assert delivered(receiver.notifications, "firing") == EXPECTED
    # One notification per group: core-02's two intrusion responses came together.
    intrusion = [
        n for n in receiver.notifications if n["groupLabels"]["alertname"].endswith("Response")
    ]
    assert len(intrusion) == 1 and len(intrusion[0]["alerts"]) == 2


def test_resolved_alerts_are_sent_as_resolved(alertmanager: tuple[str, Receiver]) -> None:
    """Every alert told firing is told resolved, to the same receiver. (Once HostDown has
    ended nothing holds core-01's alerts back, and Alertmanager lists them, resolved, in
    their groups' last notification: no page, they are resolved.)"""
    base, receiver = alertmanager
    fire(base, receiver)
    now = datetime.datetime.now(datetime.UTC).isoformat()
    post(base, [alert(n, s, h, ends=now, **labels) for n, s, h, labels in OUTAGE])
    notes = receiver.wait_for(
        lambda notes: all(
            name in delivered(notes, "resolved")
            and delivered(notes, "resolved")[name]["alerts"] >= told["alerts"]
            for name, told in EXPECTED.items()
        ),
        "every alert told firing told resolved",
    )
    resolved = delivered(notes, "resolved")
    for name, told in EXPECTED.items():
        assert resolved[name]["receiver"] == told["receiver"]
    assert "SecureCoreAuthLatencyHigh" not in delivered(notes, "firing")


SILENCE = {
    "matchers": [{"name": "alertname", "value": ".+", "isRegex": True}],
    "createdBy": "test",
    "comment": "mute every page",
}


def silence(minutes: int = 10) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    ends = now + datetime.timedelta(minutes=minutes)
    return {**SILENCE, "startsAt": now.isoformat(), "endsAt": ends.isoformat()}


def test_each_incident_level_reaches_its_receiver_in_its_timing_class(
    alertmanager: tuple[str, Receiver],
) -> None:
    """SecurityIncidentOpen as Prometheus sends it, one incident per escalation level, at
    once: level 3 arrives at once (group_wait 0s), level 2 after its 10 s, level 1 after
    its 30 s, each to its level's receiver, one notification per incident. (The role's
    own incident timings: the fixture shortens the other routes' only.)"""
    base, receiver = alertmanager
    levels = {
        "3": ("critical", "crisis"),
        "2": ("warning", "security"),
        "1": ("info", "operations"),
    }
    sent = time.monotonic()
    post(
        base,
        [
            alert(
                "SecurityIncidentOpen",
                severity,
                "core-01",
                incident=f"INC-2026-010{level}",
                escalation_level=level,
                team=team,
            )
            for level, (severity, team) in levels.items()
        ],
    )
    arrived: dict[str, float] = {}
    deadline = sent + 45
    while time.monotonic() < deadline and len(arrived) < 3:
        for note in list(receiver.notifications):
            for item in note["alerts"]:
                labels = item["labels"]
                if labels["alertname"] == "SecurityIncidentOpen" and item["status"] == "firing":
                    level = labels["escalation_level"]
                    assert note["receiver"] == f"securecore-incident-level-{level}", note
                    assert len(note["alerts"]) == 1  # one notification per incident
                    arrived.setdefault(level, time.monotonic() - sent)
        time.sleep(0.2)
    assert set(arrived) == set(levels), arrived
    assert arrived["3"] < 5, arrived
    assert 9 <= arrived["2"] < 20, arrived
    assert 29 <= arrived["1"] < 42, arrived


def test_without_the_password_nobody_silences_or_reads_alertmanager(
    alertmanager: tuple[str, Receiver],
) -> None:
    """REQ-MON-11: any local user reaches loopback; the password is root's and
    Prometheus's. Without it: no silence, no alert posted, nothing read (401)."""
    base, _ = alertmanager
    status, _ = request(base, "/api/v2/silences", silence(), authenticated=False)
    assert status == 401
    status, _ = request(base, "/api/v2/alerts", [], authenticated=False)
    assert status == 401
    for path in ("/api/v2/silences", "/api/v2/alerts", "/metrics"):
        status, _ = request(base, path, None, authenticated=False, method="GET")
        assert status == 401, path
    # A wrong password is no better.
    PASSWORD.append("not-the-password")
    try:
        status, _ = request(base, "/api/v2/silences", silence())
    finally:
        PASSWORD.pop()
    assert status == 401
    status, body = request(base, "/api/v2/silences", None, method="GET")
    assert status == 200 and json.loads(body) == []


def test_with_the_password_a_silence_is_set_and_counted_active(
    alertmanager: tuple[str, Receiver],
) -> None:
    """What AlertmanagerSilenceActive reads: alertmanager_silences{state="active"}."""
    base, _ = alertmanager
    status, body = request(base, "/api/v2/silences", silence())
    assert status == 200, body
    identifier = json.loads(body)["silenceID"]
    try:
        status, metrics = request(base, "/metrics", None, method="GET")
        assert status == 200
        assert 'alertmanager_silences{state="active"} 1' in metrics.decode()
    finally:
        status, _ = request(base, f"/api/v2/silence/{identifier}", None, method="DELETE")
        assert status == 200


def test_the_credential_is_made_once_and_kept(tmp_path: Path) -> None:
    """A second run changes nothing; a web configuration that does not verify the
    password is written again, the password kept; neither is in the output."""
    group = grp.getgrgid(os.getgid()).gr_name
    files = [str(tmp_path / "password"), str(tmp_path / "web.yml")]

    def run() -> str:
        command = [sys.executable, str(CREDENTIAL), *files, "prometheus", group]
        made = subprocess.run(command, capture_output=True, text=True, check=True)
        return made.stdout.strip() + made.stderr

    assert run() == "changed"
    password = (tmp_path / "password").read_text()
    assert len(password.strip()) >= 32
    assert all(Path(f).stat().st_mode & 0o777 == 0o640 for f in files)
    assert run() == "unchanged"
    (tmp_path / "web.yml").write_text('{"basic_auth_users": {"prometheus": "$2b$12$x"}}\n')
    output = run()
    assert output == "changed" and password.strip() not in output
    assert (tmp_path / "password").read_text() == password
    assert "$2b$" in (tmp_path / "web.yml").read_text()
