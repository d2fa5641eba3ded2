"""The real Prometheus (2.42, from the pinned Debian package) with the relabelling
roles/monitoring renders (REQ-MON-10): a local exporter serves, to every target, what
root on any host can write into node_exporter's textfile directory - Patroni's
primary, the audit witnesses' cosignatures, HAProxy's view of a core instance, a
relay's and the compliance scheduler's state, some with a forged host label. Stored
are only the copies of the hosts whose groups produce them (core-01 for Patroni,
dmz-01 for HAProxy, mgmt-01 for the checklists) and the witnesses' of the core's own
job; plugin-01's and dmz-01's are dropped before they are stored. A job without the
relabelling, scraping the same targets, stores every forged series: the protection is
the relabelling, not the exporter."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.devserver import free_port, wait_for_port
from tests.support.monitoring import render_monitoring, stop, tool

WAIT_SECONDS = 60
# What a compromised host's textfile says: a primary (hides DatabaseNoPrimary), every
# record cosigned just now (hides SecureCoreAuditNotWitnessed), core-01 out of the
# edge's balancing (a false page whose inhibition hides core-01's symptoms).
FORGED = """\
patroni_primary{scope="securecore"} 1
patroni_primary{scope="securecore",host="core-02"} 1
securecore_audit_witness_cosigned_size{witness="mgmt-01/securecore/witness"} 1e+09
securecore_audit_witness_cosigned_timestamp_seconds{witness="mgmt-01/securecore/witness"} 4e+09
haproxy_server_status{proxy="be_core",server="core-01",state="UP"} 0
securecore_metrics_relay_up{source="patroni"} 1
securecore_compliance_run_missed{checklist="daily"} 0
node_textfile_scrape_error 0
"""
FAMILIES = [
    "patroni_primary",
    "securecore_audit_witness_cosigned_size",
    "securecore_audit_witness_cosigned_timestamp_seconds",
    "haproxy_server_status",
    "securecore_metrics_relay_up",
    "securecore_compliance_run_missed",
]
NODE_HOSTS = ["mgmt-01", "core-01", "core-02", "dmz-01", "plugin-01"]


class Exporter:
    """An HTTP exporter on loopback serving FORGED to whoever scrapes it."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = FORGED.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def local_config(rendered: dict, address: str) -> dict:
    """The rendered jobs' relabelling, every target replaced by the local exporter
    (plain HTTP) under the same host label; and the node job once more without it."""
    jobs = {job["job_name"]: job for job in rendered["scrape_configs"]}

    def job(name: str, hosts: list[str], relabel: list | None) -> dict:
        config: dict[str, Any] = {
            "job_name": name,
            "static_configs": [{"targets": [address], "labels": {"host": h}} for h in hosts],
        }
        if relabel is not None:
            config["metric_relabel_configs"] = relabel
        return config

    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            job("node", NODE_HOSTS, jobs["node"]["metric_relabel_configs"]),
            job("securecore", ["core-01"], jobs["securecore"]["metric_relabel_configs"]),
            job("unprotected", NODE_HOSTS, None),
        ],
    }


def query(base: str, expression: str) -> list[dict]:
    url = f"{base}/api/v1/query?query={urllib.parse.quote(expression, safe='')}"
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (loopback)
        body = json.loads(answer.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=5) as answer:  # noqa: S310
            return answer.status == 200
    except OSError:  # urllib's HTTPError (503 while starting) and URLError among them
        return False


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("relabel")
    render_monitoring(directory, monitoring_webhook_url="https://alerts.example.org/hook")
    rendered = yaml.safe_load((directory / "prometheus.yml").read_text())
    exporter = Exporter()
    config = directory / "local.yml"
    config.write_text(yaml.safe_dump(local_config(rendered, exporter.address)))
    port = free_port()
    log = directory / "prometheus.log"
    process = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for_port(port, WAIT_SECONDS), log.read_text()
        # Ready (its port answers 503 until the storage is open), then every target
        # scraped twice: everything it will store is stored.
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline and not ready(base):
            time.sleep(0.2)
        while time.monotonic() < deadline:
            scrapes = query(base, "count_over_time(up[1m]) >= 2")
            if len(scrapes) == 2 * len(NODE_HOSTS) + 1:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"not every target scraped twice: {log.read_text()}")
        yield base
    finally:
        stop(process)
        exporter.server.shutdown()


def stored(base: str, name: str, job: str) -> set[str]:
    """The hosts whose series NAME of JOB Prometheus stored."""
    return {s["metric"]["host"] for s in query(base, f'{name}{{job="{job}"}}')}


def test_the_relayed_and_textfile_series_are_stored_from_their_producers_only(
    prometheus: str,
) -> None:
    assert stored(prometheus, "patroni_primary", "node") == {"core-01", "core-02"}
    assert stored(prometheus, "haproxy_server_status", "node") == {"dmz-01"}
    assert stored(prometheus, "securecore_metrics_relay_up", "node") == {"core-01", "core-02"}
    assert stored(prometheus, "securecore_compliance_run_missed", "node") == {"mgmt-01"}
    # A host label the series carries names no host: the target's stays (exported_host).
    forged = query(prometheus, 'patroni_primary{job="node", exported_host="core-02"}')
    assert {s["metric"]["host"] for s in forged} == {"core-01", "core-02"}
    # node_exporter's own series are every host's.
    assert stored(prometheus, "node_textfile_scrape_error", "node") == set(NODE_HOSTS)


def test_the_witness_series_are_the_core_jobs_only(prometheus: str) -> None:
    for name in (
        "securecore_audit_witness_cosigned_size",
        "securecore_audit_witness_cosigned_timestamp_seconds",
    ):
        assert stored(prometheus, name, "node") == set()
        assert stored(prometheus, name, "securecore") == {"core-01"}
    # The node families are not the core's.
    for name in ("patroni_primary", "haproxy_server_status", "securecore_compliance_run_missed"):
        assert stored(prometheus, name, "securecore") == set()


def test_without_the_relabelling_every_forged_series_is_stored(prometheus: str) -> None:
    """The control: the same targets, the same exporter, no metric_relabel_configs."""
    for name in FAMILIES:
        assert stored(prometheus, name, "unprotected") == set(NODE_HOSTS), name


def test_the_configuration_relabels_by_the_inventorys_groups(tmp_path: Path) -> None:
    """The hosts come from the inventory: core-02 out of the database group, its
    Patroni series are no longer kept."""
    directory = render_monitoring(
        tmp_path,
        monitoring_webhook_url="https://alerts.example.org/hook",
        monitoring_relays=[
            {
                "name": "patroni",
                "group": "edge",
                "prefix": "patroni",
                "url": "x",
                "curl_options": "",
            }
        ],
    )
    rendered = yaml.safe_load((directory / "prometheus.yml").read_text())
    node = next(j for j in rendered["scrape_configs"] if j["job_name"] == "node")
    patroni = [r for r in node["metric_relabel_configs"] if "patroni_" in r.get("regex", "")]
    assert [r["regex"] for r in patroni] == ["(?:patroni_.+);(?:dmz\\-01)"]
