"""The daily performance check against a real Prometheus (REQ-COMP-8, REQ-PERF-1 to 3 and 8):
the binary Debian ships (tests/support/monitoring.py) on loopback, over a TSDB the test
fills with a day of the core's series (promtool tsdb create-blocks-from openmetrics);
the fact script's own function finds it from its start-up arguments and asks it, and
the check performance.targets_24h judges what it found."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from compliance.catalog import load_catalogs
from compliance.checks import load_checks
from compliance.engine import run_checks
from compliance.gather import host_facts
from compliance.gather.runner import HostFacts
from tests.support.monitoring import tool

STEP = 60  # one sample a minute, as a scrape would give
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
AUDIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
AUTH = "/v1/sessions"
CALL = "/v1/plugins/{name}/call"
# Share of observations per bucket (its upper bound); the quantiles fall inside these.
FAST_AUTH = {0.01: 0.5, 0.025: 0.4, 0.05: 0.1}  # p95 ~ 37 ms
SLOW_AUTH = {0.05: 0.5, 0.1: 0.3, 0.25: 0.2}  # p95 ~ 212 ms
CALLS = {0.1: 0.6, 0.25: 0.39, 0.5: 0.01}  # p95 ~ 235 ms
AUDIT = {0.0025: 0.995, 0.005: 0.005}  # p99 ~ 2.5 ms


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def label_text(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


class Series:
    """The core's series for a stretch of minutes ending now, as OpenMetrics text."""

    def __init__(self, minutes: int) -> None:
        self.end = int(time.time()) - 30
        self.times = [self.end - STEP * i for i in reversed(range(minutes))]
        self.families: dict[str, list[str]] = {}

    def add(self, name: str, labels: dict[str, str], values: list[float]) -> None:
        lines = self.families.setdefault(name, [])
        for at, value in zip(self.times, values, strict=True):
            lines.append(f"{name}{{{label_text(labels)}}} {value:g} {at}")

    def counter(self, name: str, labels: dict[str, str], per_minute: float) -> None:
        self.add(name, labels, [per_minute * i for i in range(len(self.times))])

    def histogram(
        self,
        name: str,
        labels: dict[str, str],
        per_minute: float,
        shares: dict[float, float],
        bounds: tuple[float, ...],
    ) -> None:
        below = 0.0
        for bound in (*bounds, float("inf")):
            below += sum(share for upper, share in shares.items() if upper == bound)
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            self.counter(f"{name}_bucket", {**labels, "le": le}, per_minute * below)
        self.counter(f"{name}_count", labels, per_minute)

    def up(self, host: str, down_minutes: int = 0, from_minute: int = 0) -> None:
        """HOST's scrapes: answered but for DOWN_MINUTES from FROM_MINUTE."""
        values = [1.0] * len(self.times)
        for i in range(down_minutes):
            values[from_minute + i] = 0.0
        labels = {"job": "securecore", "instance": f"{host}:8443", "host": host}
        self.add("up", labels, values)

    def openmetrics(self) -> str:
        text = []
        for name, lines in self.families.items():
            text.append(f"# TYPE {name} unknown")
            text.extend(lines)
        return "\n".join([*text, "# EOF", ""])


def core_day(
    minutes: int = 24 * 60,
    auth: dict[float, float] | None = FAST_AUTH,
    calls: bool = True,
    audit: bool = True,
    errors_per_minute: float = 0.01,
    down: dict[str, tuple[int, int]] | None = None,
) -> Series:
    """Two core instances: authentication (10 a minute each), plugin calls (5), audit
    writes (20), health checks that are not client requests, and a few 5xx. DOWN: each
    instance's stretch without an answer, {host: (from minute, minutes)}; by default
    core-02 restarted once in the middle of the day (a minute)."""
    series = Series(minutes)
    if down is None:
        down = {"core-02": (minutes // 2, 1)}
    for host in ("core-01", "core-02"):
        start, length = down.get(host, (0, 0))
        series.up(host, down_minutes=length, from_minute=start)
    for host in ("core-01", "core-02"):
        core = {"job": "securecore", "instance": f"{host}:8443", "host": host}
        duration = "securecore_request_duration_seconds"
        if auth is not None:
            series.histogram(duration, {**core, "route": AUTH}, 10, auth, LATENCY_BUCKETS)
            series.counter(
                "securecore_requests_total",
                {**core, "route": AUTH, "method": "POST", "status": "201"},
                10,
            )
        if calls:
            series.histogram(duration, {**core, "route": CALL}, 5, CALLS, LATENCY_BUCKETS)
            series.counter(
                "securecore_requests_total",
                {**core, "route": CALL, "method": "POST", "status": "200"},
                5,
            )
        series.counter(
            "securecore_requests_total",
            {**core, "route": CALL, "method": "POST", "status": "502"},
            errors_per_minute,
        )
        # The edge's health checks: many, and not what the error share is about.
        series.counter(
            "securecore_requests_total",
            {**core, "route": "/readyz", "method": "GET", "status": "503"},
            60,
        )
        # The series exist from the start (the service exports them idle), counting or not.
        series.histogram(
            "securecore_audit_write_seconds", core, 20 if audit else 0, AUDIT, AUDIT_BUCKETS
        )
    # Another job's up series: never the core's availability (REQ-MON-10).
    series.add(
        "up", {"job": "node", "instance": "core-01:9100", "host": "core-01"}, [0.0] * minutes
    )
    return series


class Prometheus:
    def __init__(self, directory: Path, series: Series) -> None:
        self.directory, self.port = directory, free_port()
        directory.mkdir(parents=True)
        source = directory / "series.om"
        source.write_text(series.openmetrics())
        subprocess.run(
            [
                tool("promtool"),
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                str(source),
                str(directory / "data"),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        (directory / "prometheus.yml").write_text("global:\n  scrape_interval: 1m\n")
        self.default = directory / "default"
        self.default.write_text(
            f'ARGS="--config.file={directory}/prometheus.yml '
            f'--web.listen-address=127.0.0.1:{self.port} --storage.tsdb.retention.time=1y"\n'
        )
        self.process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={directory}/prometheus.yml",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(directory / "prometheus.log").open("wb"),
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    log = (directory / "prometheus.log").read_text()
                    raise AssertionError(f"Prometheus did not start: {log[-2000:]}") from None
                time.sleep(0.2)

    def facts(self) -> dict:
        return host_facts.performance(
            {**host_facts.DEFAULTS, "prometheus_default": str(self.default)}
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator:
    started: list[Prometheus] = []

    def start(series: Series, name: str = "prometheus") -> Prometheus:
        started.append(Prometheus(tmp_path / name, series))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def check():
    [found] = [c for c in load_checks(load_catalogs()) if c.id == "performance.targets_24h"]
    return found


def judged(check, facts: dict) -> tuple[str, str]:
    hosts = [HostFacts("mgmt-01", ["monitoring"], {"performance": facts})]
    [result] = run_checks([check], hosts, [])
    return result.status, result.detail


def test_a_good_day_passes_with_its_figures_in_the_evidence(prometheus, check) -> None:
    facts = prometheus(core_day()).facts()
    assert facts["monitoring_error"] is None and facts["not_measured"] == [], facts
    assert facts["period"] == "the last 24 h" and 23.9 < facts["window_hours"] <= 24
    assert 25 < facts["auth_p95_ms"] < 50 and 100 < facts["plugin_p95_ms"] < 250
    assert facts["audit_p99_ms"] < 5
    # 10 + 5 client requests a minute per instance, 0.01 answered 502: the health checks'
    # 503s are not client requests.
    assert 0.05 < facts["error_percent"] < 0.08
    # core-02's restart (a minute) was no outage: core-01 answered meanwhile.
    assert facts["availability_percent"] == 100
    assert facts["instance_availability_percent"]["core-01"] == 100
    assert 99.9 < facts["instance_availability_percent"]["core-02"] < 100
    status, detail = judged(check, facts)
    assert status == "pass", detail
    assert "window 24 h (the last 24 h): auth p95 " in detail
    assert "service availability 100 % (at least one core instance up, 144" in detail
    assert "core-01 100 %, core-02 99.93" in detail and "too few" not in detail
    assert all(facts[f"{name}_judged"] for name in ("auth", "plugin", "audit", "errors"))
    assert facts["availability_judged"]


def test_twenty_minutes_of_a_site_just_deployed_are_reported_not_judged(prometheus, check) -> None:
    """Twenty minutes of a site just deployed: 10 sign-ins, all slow; 10 client requests, one
    answered 5xx; one scrape both instances missed together (a busy machine). Each figure is
    over its target, in the deployment's own minutes: reported, not judged."""
    series = Series(20)
    for host in ("core-01", "core-02"):
        series.up(host, down_minutes=1, from_minute=10)
    core = {"job": "securecore", "instance": "core-01:8443", "host": "core-01"}
    duration = "securecore_request_duration_seconds"
    series.histogram(duration, {**core, "route": AUTH}, 0.5, SLOW_AUTH, LATENCY_BUCKETS)
    status_201 = {**core, "route": AUTH, "method": "POST", "status": "201"}
    series.counter("securecore_requests_total", status_201, 0.5)
    status_502 = {**core, "route": CALL, "method": "POST", "status": "502"}
    series.counter("securecore_requests_total", status_502, 0.05)
    facts = prometheus(series).facts()
    assert facts["auth_p95_ms"] > 100 and not facts["auth_judged"], facts
    assert facts["error_percent"] > 1 and not facts["errors_judged"], facts
    assert facts["availability_percent"] < 99.9 and not facts["availability_judged"], facts
    assert not facts["full_window"]
    status, detail = judged(check, facts)
    assert status == "pass", detail
    young = "not judged, 0.33 h of data, judged on a whole day"
    for said in (
        f"(10 requests: {young})",
        f"(1 of 11 client requests answered 5xx: {young})",
        f" 20 scrapes: {young};",
    ):
        assert said in detail, detail


def test_a_day_is_not_judged_on_too_few_samples(prometheus, check) -> None:
    """A whole day with a dozen sign-ins, all slow: a p95 of twelve is their slowest but
    one, too few to tell. Reported, not judged; the day's other figures are."""
    series = core_day(auth=None)
    core = {"job": "securecore", "instance": "core-01:8443", "host": "core-01"}
    duration = "securecore_request_duration_seconds"
    series.histogram(duration, {**core, "route": AUTH}, 0.01, SLOW_AUTH, LATENCY_BUCKETS)
    facts = prometheus(series).facts()
    assert facts["full_window"] and facts["auth_p95_ms"] > 100 and not facts["auth_judged"]
    assert facts["audit_judged"] and facts["availability_judged"], facts
    status, detail = judged(check, facts)
    assert status == "pass", detail
    assert "requests: too few to judge a p95, at least 20)" in detail, detail


def test_a_site_monitored_for_less_than_a_day_is_reported_not_judged(prometheus, check) -> None:
    """Three hours of a site whose deployment made it slow: every figure over its target on
    samples enough to judge a day. Reported, not judged - the same hours in a whole day are
    judged (test_a_slow_authentication_p95_fails_with_the_figure)."""
    series = core_day(
        minutes=180,
        auth=SLOW_AUTH,
        errors_per_minute=1.0,
        down={"core-01": (60, 5), "core-02": (60, 5)},
    )
    facts = prometheus(series).facts()
    assert not facts["full_window"] and 2.95 < facts["window_hours"] <= 3, facts
    assert facts["auth_count"] > 3000 and facts["auth_p95_ms"] > 100, facts
    assert facts["error_percent"] > 6 and facts["availability_percent"] < 99.9, facts
    assert not any(
        facts[f"{name}_judged"] for name in ("auth", "plugin", "audit", "errors", "availability")
    )
    status, detail = judged(check, facts)
    assert status == "pass", detail
    assert "requests: not judged, 2.99 h of data, judged on a whole day)" in detail, detail


def test_a_slow_authentication_p95_fails_with_the_figure(prometheus, check) -> None:
    facts = prometheus(core_day(auth=SLOW_AUTH)).facts()
    assert facts["auth_p95_ms"] > 100
    status, detail = judged(check, facts)
    assert status == "fail"
    assert "performance.auth_p95_ms = " in detail and "(below 100)" in detail
    assert "plugin_p95_ms" not in detail  # the figures that met their targets are not blamed


def test_more_than_1_percent_of_client_requests_answered_5xx_fails(prometheus, check) -> None:
    # 1 of 15 client requests a minute per instance: 6.25 %.
    facts = prometheus(core_day(errors_per_minute=1.0)).facts()
    assert 6 < facts["error_percent"] < 6.5 and facts["server_errors"] > 2800
    status, detail = judged(check, facts)
    assert status == "fail"
    assert "performance.error_percent = 6.2" in detail and "(at_most 1)" in detail
    assert "availability" not in detail


def test_the_whole_service_down_for_more_than_0_1_percent_fails(prometheus, check) -> None:
    # Both instances down for the same 5 minutes of 1440: 99.65 %, below 99.9 %.
    facts = prometheus(core_day(down={"core-01": (600, 5), "core-02": (600, 5)})).facts()
    assert 99.6 < facts["availability_percent"] < 99.7
    status, detail = judged(check, facts)
    assert status == "fail"
    assert "performance.availability_percent = 99.6" in detail and "(at_least 99.9)" in detail


def test_one_instance_down_for_an_hour_while_the_other_serves_passes(prometheus, check) -> None:
    # core-02 down an hour (95.8 % of its scrapes answered), core-01 answering meanwhile,
    # and core-01 restarted later, for a minute, while core-02 served: never both down.
    facts = prometheus(core_day(down={"core-01": (1000, 1), "core-02": (300, 60)})).facts()
    assert facts["availability_percent"] == 100
    assert 95.8 < facts["instance_availability_percent"]["core-02"] < 95.9
    status, detail = judged(check, facts)
    assert status == "pass", detail
    assert "service availability 100 %" in detail and "core-02 95.8" in detail


def test_a_site_with_no_traffic_yet_passes_with_nothing_measured(prometheus, check) -> None:
    # A site just deployed: two hours of data, no session opened, no plugin called, no
    # audit record written, no client request - but both instances up throughout.
    series = core_day(
        minutes=120, auth=None, calls=False, audit=False, errors_per_minute=0, down={}
    )
    facts = prometheus(series).facts()
    assert facts["monitoring_error"] is None
    assert facts["period"] == "since Prometheus's first sample of the core, less than 24 h ago"
    assert 1.95 < facts["window_hours"] <= 2
    assert facts["auth_count"] == facts["plugin_count"] == facts["audit_count"] == 0
    assert facts["requests"] == 0 and facts["error_percent"] is None
    assert facts["auth_p95_ms"] is None and facts["audit_p99_ms"] is None
    assert len(facts["not_measured"]) == 4
    status, detail = judged(check, facts)
    assert status == "pass", detail
    assert (
        "window 1.99 h (since Prometheus's first sample of the core, less than 24 h ago): "
        in detail
    )
    for said in (
        "auth p95 not measured: no authentication requests (POST /v1/sessions) in the window "
        "(0 requests)",
        "plugin p95 not measured: no plugin calls (POST /v1/plugins/{name}/call) in the window "
        "(0 calls)",
        "audit p99 not measured: no audit writes in the window (0 writes)",
        "errors not measured: no client requests (/v1/...) in the window (0 requests)",
        "service availability 100 %",
    ):
        assert said in detail, detail


def test_a_prometheus_that_does_not_answer_fails_naming_its_address(tmp_path, check) -> None:
    port = free_port()
    default = tmp_path / "prometheus"
    default.write_text(f'ARGS="--web.listen-address=127.0.0.1:{port}"\n')
    facts = host_facts.performance({**host_facts.DEFAULTS, "prometheus_default": str(default)})
    status, detail = judged(check, facts)
    assert status == "fail"
    assert f"Prometheus at http://127.0.0.1:{port} did not answer" in detail, detail


def test_prometheus_with_no_sample_of_the_core_fails(prometheus, check) -> None:
    # Prometheus answers, with other jobs' series, but does not scrape the core: no figure
    # is "not measured" then, the monitoring itself has failed.
    series = Series(60)
    series.add("up", {"job": "node", "instance": "x:9100", "host": "x"}, [1.0] * 60)
    series.add("securecore_audit_write_seconds_count", {"job": "node", "host": "x"}, [0.0] * 60)
    facts = prometheus(series).facts()
    status, detail = judged(check, facts)
    assert status == "fail"
    assert "performance.monitoring_error = " in detail
    assert 'has no sample of the core instances (up{job="securecore"})' in detail, detail


@pytest.mark.parametrize(
    ("args", "url"),
    [
        ("--web.listen-address=10.210.10.10:9090 --config.file=x", "http://10.210.10.10:9090"),
        ("--web.listen-address=0.0.0.0:9091", "http://127.0.0.1:9091"),
        ("--web.listen-address=[::]:9092", "http://127.0.0.1:9092"),
        ("", "http://127.0.0.1:9090"),  # Prometheus's own default, :9090
    ],
)
def test_the_address_is_the_one_prometheus_is_started_with(tmp_path, args, url) -> None:
    default = tmp_path / "prometheus"
    default.write_text(f'# Debian\nARGS="{args}"\n')
    paths = {**host_facts.DEFAULTS, "prometheus_default": str(default)}
    assert host_facts.prometheus_url(paths) == url


def test_only_a_host_running_prometheus_asks_it(tmp_path) -> None:
    # The script gathers the group where Prometheus's start-up file is (the monitoring
    # hosts): elsewhere no performance facts, and no error for their absence.
    facts = json.loads(
        subprocess.run(
            [
                "python3",
                str(Path(host_facts.__file__)),
                json.dumps(
                    {
                        "prometheus_default": str(tmp_path / "absent"),
                        "writable_roots": [],
                        "apt_options": ["-o", f"Dir::State={tmp_path}"],
                    }
                ),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    )
    assert "performance" not in facts and "performance" not in facts["_errors"]
