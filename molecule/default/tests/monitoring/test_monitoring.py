"""Monitoring and alerting on the lab (roles/monitoring; REQ-MON-6 to REQ-MON-8):
Prometheus on mgmt-01 scrapes every host's node_exporter and the core instances over
mutual TLS, the database's and the edge's metrics arrive relayed, node_exporter and the
core's /metrics answer Prometheus's certificate and nothing else, Alertmanager refuses
whoever lacks its password (REQ-MON-11), and a core instance that stops is paged through
Alertmanager to a real HTTP receiver, then resolved."""

from __future__ import annotations

import json
import shlex
import time
from urllib.parse import quote

import pytest

from tests.support.labhosts import can_connect, lab_spec

SPEC = lab_spec()
HOSTS = {h.name: h for h in SPEC.hosts}
MGMT = "mgmt-01"
PROMETHEUS = f"http://{HOSTS[MGMT].address}:9090"
NODE_PORT, CORE_PORT = 9100, 8443
TLS = "/etc/securecore/tls"
# The lab's webhook (inventories/lab/group_vars/monitoring): a receiver this module starts.
RECEIVER_PORT, RECEIVED = 9095, "/run/securecore-test-alerts.jsonl"


def api(mgmt, path: str) -> dict:
    """Prometheus's HTTP API, asked on mgmt-01 (its port is the management segment's)."""
    url = PROMETHEUS + path
    client = (
        "import urllib.request,sys;"
        f"sys.stdout.write(urllib.request.urlopen({url!r},timeout=20).read().decode())"
    )
    answer = json.loads(mgmt.check_output(f"python3 -c {shlex.quote(client)}"))
    assert answer["status"] == "success", answer
    return answer["data"]


def series(mgmt, expression: str) -> list[dict]:
    return api(mgmt, "/api/v1/query?query=" + quote(expression, safe=""))["result"]


def tls_status(source, address: str, port: int, path: str, certificate: str | None) -> str:
    """The HTTP status SOURCE gets for PATH over TLS (the site's CA) with CERTIFICATE
    (PEM file and key, on SOURCE) or without one; "refused: ..." when the handshake or
    the connection fails."""
    identity = f"c.load_cert_chain('{certificate}.pem','{certificate}.key');" if certificate else ""
    client = (
        "import ssl,http.client\n"
        f"c=ssl.create_default_context(cafile='{TLS}/ca.pem');c.check_hostname=False;{identity}\n"
        "try:\n"
        f" h=http.client.HTTPSConnection('{address}',{port},context=c,timeout=10)\n"
        f" h.request('GET','{path}');print(h.getresponse().status)\n"
        "except Exception as e:\n print('refused:',type(e).__name__)"
    )
    return source.check_output(f"python3 -c {shlex.quote(client)}")


@pytest.fixture(scope="module")
def mgmt(hosts):
    return hosts[MGMT]


def test_every_host_and_core_instance_is_scraped(mgmt) -> None:
    # The checks before this one restart core instances: a target is given the time of
    # two scrapes (10 s each in the lab) to be seen answering again.
    deadline = time.monotonic() + 30
    while True:
        targets = api(mgmt, "/api/v1/targets?state=active")["activeTargets"]
        health = {(t["labels"]["job"], t["labels"]["host"]): t["health"] for t in targets}
        if all(state == "up" for state in health.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    wanted = {("node", name) for name in HOSTS}
    wanted |= {("securecore", "core-01"), ("securecore", "core-02")}
    wanted |= {("prometheus", MGMT), ("alertmanager", MGMT)}
    assert set(health) == wanted
    assert {target for target, state in health.items() if state != "up"} == set()
    # The core's scrape is the TLS 1.3 one with Prometheus's own certificate.
    core = next(t for t in targets if t["labels"]["job"] == "securecore")
    assert core["scrapeUrl"].startswith("https://")


def relayed(mgmt) -> dict:
    """What the relays show now: Patroni's primaries, etcd's members with a leader, the
    edge's core servers UP, each relay's state, textfile errors."""
    return {
        "primaries": sorted(
            (s["metric"]["host"], s["value"][1]) for s in series(mgmt, "patroni_primary")
        ),
        "leaders": sorted(s["metric"]["host"] for s in series(mgmt, "etcd_server_has_leader == 1")),
        "backends up": sorted(
            s["metric"]["server"]
            for s in series(mgmt, 'haproxy_server_status{proxy="be_core",state="UP"} == 1')
        ),
        "relays": sorted(s["value"][1] for s in series(mgmt, "securecore_metrics_relay_up")),
        "textfile errors": series(mgmt, "node_textfile_scrape_error == 1"),
    }


def test_the_database_and_edge_metrics_arrive_relayed(mgmt) -> None:
    # The edge's checks before this one stop and start core-01 behind HAProxy: its server
    # is UP again after HAProxy's rise checks, a relay (every 15 s) and a scrape (10 s in
    # the lab). Bounded: what the relays show is asked again until it settles or 60 s.
    deadline = time.monotonic() + 60
    while True:
        found = relayed(mgmt)
        primaries = [value for _host, value in found["primaries"]]
        settled = (
            [host for host, _value in found["primaries"]] == ["core-01", "core-02"]
            and sorted(primaries) == ["0", "1"]
            and found["leaders"] == sorted(["core-01", "core-02", MGMT])
            and found["backends up"] == ["core-01", "core-02"]
            and found["relays"]
            and set(found["relays"]) == {"1"}
            and found["textfile errors"] == []
        )
        if settled or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert settled, found


def test_each_repository_reports_its_newest_backup(hosts, mgmt) -> None:
    """The site's converge made the first verified backup in each pgBackRest repository
    (repo1 on mgmt-01, repo2 on core-03, where pgbackrest-full.timer runs); each host's
    securecore-backup-metrics wrote it from the repository: Prometheus has it, recent
    (within the 26 hours of BackupTooOld), labelled backup and repo only, from those hosts
    only, and neither BackupTooOld nor BackupMetricsAbsent has a host pending or firing."""
    expected = {MGMT: "repo1", "core-03": "repo2"}
    found = series(mgmt, 'securecore_backup_last_success_timestamp_seconds{job="node"}')
    assert {s["metric"]["host"]: s["metric"]["repo"] for s in found} == expected
    for sample in found:
        assert set(sample["metric"]) == {"__name__", "job", "host", "instance", "backup", "repo"}
        assert sample["metric"]["backup"] == "pgbackrest"
        when, value = sample["value"]
        assert 0 <= float(when) - float(value) < 26 * 3600, sample
    # The truth is the repository: the value is its newest full backup's stop time.
    for host, repo in expected.items():
        command = f"pgbackrest --stanza=securecore --repo={repo[-1]} --output=json info"
        info = json.loads(hosts[host].check_output(f"runuser -u postgres -- {command}"))
        stop = max(b["timestamp"]["stop"] for b in info[0]["backup"] if b["type"] == "full")
        mine = next(s for s in found if s["metric"]["host"] == host)
        assert int(float(mine["value"][1])) == stop
        unit = hosts[host].run("systemctl show -p Result --value pgbackrest-full-metrics.service")
        assert unit.stdout.strip() == "success"
    expecting = series(mgmt, 'up{job="node", backups!=""}')
    assert {s["metric"]["host"] for s in expecting} == set(expected)
    alerts = api(mgmt, "/api/v1/alerts")["alerts"]
    assert [
        a for a in alerts if a["labels"]["alertname"] in ("BackupTooOld", "BackupMetricsAbsent")
    ] == []


@pytest.mark.parametrize("name", ["core-01", "plugin-01", "dmz-01"])
def test_node_exporter_answers_prometheus_only(hosts, mgmt, name) -> None:
    address = str(HOSTS[name].address)
    # From another zone the port is closed (the firewall: management only).
    other = "core-02" if name != "core-01" else "dmz-01"
    assert not can_connect(hosts[other], address, NODE_PORT, banner=False)
    # From the management segment: a client certificate of the site's CA is required.
    assert tls_status(mgmt, address, NODE_PORT, "/metrics", None).startswith("refused")
    assert tls_status(mgmt, address, NODE_PORT, "/metrics", f"{TLS}/monitoring") == "200"


@pytest.mark.parametrize("name", ["core-01", "mgmt-01", "dmz-01"])
def test_the_textfile_directory_is_sticky_and_not_world_writable(hosts, name) -> None:
    """Its writers (root's relays, the compliance scheduler's user on mgmt-01) cannot
    remove or replace one another's files, and nobody else writes it."""
    directory = hosts[name].file("/var/lib/prometheus/node-exporter")
    assert directory.is_directory
    assert directory.mode & 0o1000 and not directory.mode & 0o002, oct(directory.mode)


def test_the_core_gives_prometheus_its_metrics_and_nothing_else(mgmt) -> None:
    core = str(HOSTS["core-01"].address)
    assert tls_status(mgmt, core, CORE_PORT, "/metrics", f"{TLS}/monitoring") == "200"
    assert tls_status(mgmt, core, CORE_PORT, "/v1/whoami", f"{TLS}/monitoring") == "403"


ALERTMANAGER = "http://127.0.0.1:9093"
ALERTMANAGER_CREDENTIAL_FILE = "/etc/prometheus/alertmanager.password"


def alertmanager_status(mgmt, method: str, path: str, body: str, authenticated: bool) -> str:
    """The HTTP status of Alertmanager's answer on mgmt-01's loopback, with the host's
    password (read from its file by the client, as root: never on a command line) or
    without; the answer's body after the status when it is 200."""
    auth = (
        f"p=open('{ALERTMANAGER_CREDENTIAL_FILE}').read().strip();"
        "h['Authorization']='Basic '+base64.b64encode(('prometheus:'+p).encode()).decode()\n"
        if authenticated
        else ""
    )
    client = (
        "import base64,sys,urllib.request,urllib.error\n"
        "h={'Content-Type':'application/json'}\n"
        f"{auth}"
        f"r=urllib.request.Request('{ALERTMANAGER}{path}',data={body!r}.encode() or None,"
        f"method='{method}',headers=h)\n"
        "try:\n"
        " a=urllib.request.urlopen(r,timeout=10);print(a.status,a.read().decode())\n"
        "except urllib.error.HTTPError as e:\n print(e.code)"
    )
    return mgmt.check_output(f"python3 -c {shlex.quote(client)}")


def test_alertmanager_refuses_whoever_lacks_its_password(mgmt) -> None:
    """REQ-MON-11: any local user reaches Alertmanager's loopback port; without the
    password no silence is set (401); with it (root reads it) one is, and is expired."""
    # The credential's files: root's and the services' user's only.
    for path in (ALERTMANAGER_CREDENTIAL_FILE, "/etc/prometheus/alertmanager-web.yml"):
        assert mgmt.file(path).mode == 0o640 and mgmt.file(path).user == "root"
        assert mgmt.file(path).group == "prometheus"
    now = time.time()
    silence = json.dumps(
        {
            "matchers": [{"name": "alertname", "value": "LabSilenceTest", "isRegex": False}],
            "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "endsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 300)),
            "createdBy": "lab test",
            "comment": "REQ-MON-11 check",
        }
    )
    assert alertmanager_status(mgmt, "POST", "/api/v2/silences", silence, False) == "401"
    assert alertmanager_status(mgmt, "GET", "/api/v2/alerts", "", False) == "401"
    answer = alertmanager_status(mgmt, "POST", "/api/v2/silences", silence, True)
    status, _, body = answer.partition(" ")
    assert status == "200", answer
    identifier = json.loads(body)["silenceID"]
    expired = alertmanager_status(mgmt, "DELETE", f"/api/v2/silence/{identifier}", "", True)
    assert expired.startswith("200")
    # Prometheus authenticates too: its scrape of Alertmanager is up (the check above
    # of every target) and it reaches Alertmanager with its alerts.
    reached = api(mgmt, "/api/v1/alertmanagers")["activeAlertmanagers"]
    assert [a["url"] for a in reached] == [f"{ALERTMANAGER}/api/v2/alerts"]


def received(mgmt) -> list[dict]:
    text = mgmt.run(f"cat {RECEIVED}").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def alerts_of(notifications: list[dict], name: str, host: str, status: str) -> list[dict]:
    return [
        a
        for n in notifications
        for a in n["alerts"]
        if a["labels"]["alertname"] == name
        and a["labels"].get("host") == host
        and a["status"] == status
    ]


def wait_for(mgmt, name: str, host: str, status: str, seconds: float) -> list[dict]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        notifications = received(mgmt)
        if alerts_of(notifications, name, host, status):
            return notifications
        time.sleep(2)
    raise AssertionError(f"no {status} {name} for {host} within {seconds} s: {received(mgmt)}")


def test_a_core_instance_that_stops_is_paged_once_and_resolved(hosts, mgmt) -> None:
    """The receiver is the lab's webhook (a real HTTP server on mgmt-01's loopback): the
    page is Alertmanager's JSON, on the critical receiver, and its resolution follows the
    restart. The instance's readiness alert (the edge's view) is inhibited meanwhile."""
    unit = "securecore-test-alert-receiver"
    server = (
        "import http.server\n"
        "class R(http.server.BaseHTTPRequestHandler):\n"
        " def do_POST(self):\n"
        "  body=self.rfile.read(int(self.headers['Content-Length']))\n"
        f"  open('{RECEIVED}','ab').write(body.replace(b'\\n',b' ')+b'\\n')\n"
        "  self.send_response(200);self.end_headers()\n"
        " def log_message(self,*a):pass\n"
        f"http.server.HTTPServer(('127.0.0.1',{RECEIVER_PORT}),R).serve_forever()"
    )
    mgmt.run(f"systemctl stop {unit} 2>/dev/null; rm -f {RECEIVED}")
    mgmt.check_output(
        f"systemd-run --unit {unit} --collect timeout 300 python3 -c {shlex.quote(server)}"
    )
    core = hosts["core-02"]
    # What already fires or is pending about core-02 (the container host's clock, a plugin
    # registered minutes ago) is not the outage's.
    before = {
        a["labels"]["alertname"]
        for a in api(mgmt, "/api/v1/alerts")["alerts"]
        if a["labels"].get("host") == "core-02"
    }
    try:
        core.check_output("systemctl stop securecore")
        notifications = wait_for(mgmt, "SecureCoreDown", "core-02", "firing", 120)
        page = next(
            n for n in notifications if alerts_of([n], "SecureCoreDown", "core-02", "firing")
        )
        assert page["receiver"] == "securecore-critical" and page["version"] == "4"
        core.check_output("systemctl start securecore")
        notifications = wait_for(mgmt, "SecureCoreDown", "core-02", "resolved", 120)
        # One outage, one page: of core-02's alerts the outage added only this one (the
        # edge's view of the same instance, SecureCoreNotReady, is inhibited by it).
        about_core_02 = {
            a["labels"]["alertname"]
            for n in notifications
            for a in n["alerts"]
            if a["labels"].get("host") == "core-02"
        }
        assert about_core_02 - before == {"SecureCoreDown"}
    finally:
        core.run("systemctl start securecore")
        mgmt.run(f"systemctl stop {unit}")
