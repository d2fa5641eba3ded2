"""What the scheduler's timers run: retention that keeps the chain verifiable, missed
runs, and alerts (log, Prometheus textfile, a webhook - a real HTTP server here)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from compliance.evidence import (
    PRUNED,
    TrustAnchor,
    generate_key,
    load_signing_key,
    verify_bundles,
    write_bundle,
)
from compliance.schedule import prune, schedule_state
from tests.support.commands import compliance

NOW = datetime.datetime.now(datetime.UTC)


def make_bundles(directory: Path, key, count: int) -> list[Path]:
    made = []
    for day in range(count):
        results = [
            {
                "check": "ssh.keys_only",
                "host": "core-01",
                "status": "pass",
                "detail": "ok",
                "severity": "high",
                "controls": {},
                "waiver": None,
            }
        ]
        made.append(
            write_bundle(
                directory,
                "daily",
                results,
                [{"host": "core-01"}],
                {"core-01": {}},
                {"day": day},
                key,
            )
        )
    return made


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "evidence.key"
    generate_key(path)
    return path


def test_retention_removes_old_bundles_and_the_chain_still_verifies(
    tmp_path: Path, key_path: Path
) -> None:
    key = load_signing_key(key_path)
    evidence = tmp_path / "daily"
    bundles = make_bundles(evidence, key, 4)
    assert prune(evidence, 365, key) == []  # nothing is a year old
    removed = prune(evidence, 365, key, now=NOW + datetime.timedelta(days=400))
    # Everything is older than a year then, but the newest is always kept.
    assert removed == [b.name for b in bundles[:3]]
    assert [p.name for p in evidence.iterdir() if p.is_dir()] == [bundles[3].name]
    anchor = TrustAnchor.from_options([Path(f"{key_path}.pub")])
    assert verify_bundles(evidence, anchor).problems == []
    # More bundles, pruned again: the record moves on and counts every removal.
    more = make_bundles(evidence, key, 2)
    prune(evidence, 365, key, now=NOW + datetime.timedelta(days=800))
    record = json.loads((evidence / PRUNED).read_text())["record"]
    assert record["count"] == 5 and record["pruned_through"]["id"] == more[0].name
    assert verify_bundles(evidence, anchor).problems == []
    with pytest.raises(Exception, match="keep at least one day"):
        prune(evidence, 0, key)


def test_a_bundle_removed_outside_retention_is_still_found(tmp_path: Path, key_path: Path) -> None:
    key = load_signing_key(key_path)
    evidence = tmp_path / "daily"
    bundles = make_bundles(evidence, key, 4)
    prune(evidence, 365, key, now=NOW + datetime.timedelta(days=400))
    make_bundles(evidence, key, 2)
    shutil.rmtree(bundles[3])  # the oldest one kept: not what the record says was pruned
    anchor = TrustAnchor.from_options([Path(f"{key_path}.pub")])
    chain = verify_bundles(evidence, anchor).chain
    assert len(chain) == 1 and f"follows {bundles[3].name}, which is not here" in chain[0]
    # A record edited to cover the removal no longer verifies.
    signed = json.loads((evidence / PRUNED).read_text())
    signed["record"]["pruned_through"]["id"] = bundles[3].name
    (evidence / PRUNED).write_text(json.dumps(signed))
    outcome = verify_bundles(evidence, anchor)
    assert outcome.series == [f"{evidence / PRUNED}: the signature does not verify (changed)"]


def test_a_missed_run_is_found_per_checklist(tmp_path: Path, key_path: Path) -> None:
    key = load_signing_key(key_path)
    [bundle] = make_bundles(tmp_path / "weekly", key, 1)
    installed = NOW - datetime.timedelta(days=60)
    assert not schedule_state(tmp_path, "weekly", installed).missed
    late = schedule_state(tmp_path, "weekly", installed, now=NOW + datetime.timedelta(days=8))
    assert late.missed and bundle.name in late.detail and "every 7 d" in late.detail
    # No run yet: missed only once the schedule has been installed longer than a period.
    assert schedule_state(tmp_path, "daily", installed).missed
    assert not schedule_state(tmp_path, "daily", NOW - datetime.timedelta(hours=3)).missed


class Webhook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Webhook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook():
    Webhook.received = []
    server = HTTPServer(("127.0.0.1", 0), Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", Webhook.received
    server.shutdown()


def test_a_scheduled_run_alerts_on_errors_and_writes_metrics(
    inventory,
    tmp_path: Path,
    key_path: Path,
    webhook,
) -> None:
    url, received = webhook
    root, metrics = tmp_path / "evidence", tmp_path / "textfile" / "compliance.prom"
    heads = tmp_path / "state" / "heads"  # outside the evidence root
    run = compliance(
        "schedule",
        "run",
        "daily",
        "-i",
        str(inventory),
        "--signing-key",
        str(key_path),
        "--evidence-root",
        str(root),
        "--metrics",
        str(metrics),
        "--webhook",
        url,
        "--store",
        str(tmp_path / "attestations"),
        "--head-dir",
        str(heads),
    )
    # No core host in this inventory: the service items are errors - an alert.
    assert run.returncode == 2, run.stderr
    assert "<3>compliance alert: the daily checklist could not be completed" in run.stderr
    [bundle] = [p for p in (root / "daily").iterdir() if p.is_dir()]
    [alert] = received
    assert alert["event"] == "checklist_error" and alert["bundle"] == bundle.name
    assert alert["checklist"] == "daily" and alert["items"]["error"] >= 1
    assert set(alert) == {
        "event",
        "checklist",
        "message",
        "host",
        "status",
        "bundle",
        "items",
        "at",
    }  # only what happened: no facts, details or secrets
    text = metrics.read_text()
    assert 'securecore_compliance_last_run_status{checklist="daily"} 2' in text
    assert 'securecore_compliance_run_missed{checklist="daily"} 0' in text
    verified = compliance(
        "verify",
        str(root / "daily"),
        "--public-key",
        f"{key_path}.pub",
        "--head",
        str(heads / "daily.json"),
    )
    assert verified.returncode == 0, verified.stdout
    head = json.loads((heads / "daily.json").read_text())["record"]
    assert head["newest"]["id"] == bundle.name and head["count"] == 1
    # Missed runs: weekly and monthly never ran since an install 40 days ago.
    (root / ".installed").touch()
    old = time.time() - 40 * 86400
    os.utime(root / ".installed", (old, old))
    status = compliance(
        "schedule",
        "status",
        "--evidence-root",
        str(root),
        "--metrics",
        str(metrics),
        "--webhook",
        url,
    )
    assert status.returncode == 1
    lines = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()}
    assert lines == {"daily": "ok", "weekly": "MISSED", "monthly": "MISSED"}
    assert [a["event"] for a in received[1:]] == ["checklist_missed", "checklist_missed"]
    text = metrics.read_text()
    assert 'securecore_compliance_run_missed{checklist="weekly"} 1' in text
    assert 'securecore_compliance_last_run_status{checklist="daily"} 2' in text  # kept
    # A webhook that cannot be reached is logged, and the run itself goes on.
    down = compliance(
        "schedule",
        "status",
        "--evidence-root",
        str(root),
        "--checklist",
        "daily",
        "--webhook",
        "http://127.0.0.1:9/x",
    )
    assert down.returncode == 0
    lonely = compliance(
        "schedule", "run", "daily", "-i", str(inventory), "--evidence-root", str(root)
    )
    assert lonely.returncode == 2 and "--signing-key is required" in lonely.stderr
    # The hourly status also verifies each series against the key and its head: the
    # newest daily run removed is alerted.
    trusted = ("--trusted-key", f"{key_path}.pub", "--head-dir", str(heads))
    whole = compliance(
        "schedule", "status", "--evidence-root", str(root), "--checklist", "daily", *trusted
    )
    assert whole.returncode == 0 and "daily    verified" in whole.stdout, whole.stdout
    shutil.rmtree(bundle)
    (root / "daily" / f"{bundle.name}.tar.gz").unlink(missing_ok=True)
    gone = compliance(
        "schedule",
        "status",
        "--evidence-root",
        str(root),
        "--checklist",
        "daily",
        "--metrics",
        str(metrics),
        "--webhook",
        url,
        *trusted,
    )
    assert gone.returncode == 1 and "daily    BROKEN" in gone.stdout
    [broken] = [a for a in received if a["event"] == "evidence_broken"]
    assert f"names {bundle.name} as the newest" in broken["message"]
    assert 'securecore_compliance_evidence_broken{checklist="daily"} 1' in metrics.read_text()


def test_the_metrics_textfile_is_never_written_through_a_placed_link(tmp_path: Path) -> None:
    """node_exporter's textfile directory has other writers (roles/monitoring's relays):
    a link at the staging name of old is left alone, and nothing is left behind."""
    from compliance.schedule import write_metrics
    from tests.support.monitoring import planted_textfile_dir

    textfiles, victim = planted_textfile_dir(tmp_path, ".securecore_compliance.prom.partial")
    path = textfiles / "securecore_compliance.prom"
    write_metrics(path, {'securecore_compliance_run_missed{checklist="daily"}': 0})
    assert 'securecore_compliance_run_missed{checklist="daily"} 0' in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o644
    assert victim.read_text() == "untouched\n"
    assert sorted(p.name for p in textfiles.iterdir()) == [
        ".securecore_compliance.prom.partial",
        "securecore_compliance.prom",
    ]
