"""roles/monitoring's Alertmanager configuration in the real Alertmanager (0.25, from the
pinned Debian package) on loopback: alerts posted to its API (v2) reach a local webhook
receiver routed by severity, grouped by alert name, with an outage's consequences held
back (inhibition), and are sent again when resolved (REQ-MON-7)."""

from __future__ import annotations

import datetime
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

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


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Receiver]]:
    receiver = Receiver()
    directory = render_monitoring(
        tmp_path_factory.mktemp("alertmanager"),
        monitoring_webhook_url=receiver.url,
        # The role's timings, shortened so that the test waits seconds.
        monitoring_group_wait="1s",
        monitoring_group_interval="2s",
        monitoring_resolve_timeout="1m",
    )
    port = free_port()
    process = subprocess.Popen(
        [
            tool("prometheus-alertmanager"),
            f"--config.file={directory / 'alertmanager.yml'}",
            f"--storage.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip port: one Alertmanager
        ],
        stdout=subprocess.DEVNULL,
        stderr=(directory / "alertmanager.log").open("w"),
    )
    try:
        assert wait_for_port(port, WAIT_SECONDS), (directory / "alertmanager.log").read_text()
        yield f"http://127.0.0.1:{port}", receiver
    finally:
        stop(process)
        receiver.server.shutdown()


def post(base: str, alerts: list[dict[str, Any]]) -> None:
    # BASE is the test's own http://127.0.0.1 URL.
    request = urllib.request.Request(  # noqa: S310
        f"{base}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        assert answer.status == 200


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


def test_an_outage_is_routed_by_severity_grouped_and_its_consequences_held_back(
    alertmanager: tuple[str, Receiver],
) -> None:
    base, receiver = alertmanager
    post(base, [alert(n, s, h, **labels) for n, s, h, labels in OUTAGE])
    receiver.wait_for(
        lambda notes: delivered(notes, "firing").keys() >= EXPECTED.keys(),
        "every expected group delivered",
    )
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
