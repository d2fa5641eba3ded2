"""Prometheus metrics of the service, in its own registry.

Request rates and latencies come from the middleware; policy decisions from
the engine's audit hook; trust scores, plugin calls, sessions and the audit
log's lag are read when /metrics is scraped, so they are never stale.

With several worker processes, the supervisor sets PROMETHEUS_MULTIPROC_DIR
before it starts them: each worker's counters and histograms then live in
files there, and a scrape answered by any worker adds up all of them
(prometheus_client's multiprocess mode), so /metrics is the service's, not
one worker's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import ParamSpec

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

P = ParamSpec("P")


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "securecore_requests_total",
            "Requests answered",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "securecore_request_duration_seconds",
            "Time to answer a request",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.decisions = Counter(
            "securecore_policy_decisions_total",
            "Policy decisions",
            ["stage", "outcome"],
            registry=self.registry,
        )
        # REQ-SVC-21, per step of a call through the core to a plugin: "session"
        # (step 1; 2-5 are the policy decisions above), "seal" (6), "mtls_call" (7),
        # "open" (8), "record" (9 and 10: the communication record and the trust
        # update, one transaction). Outcome "success" or the code that ended it.
        self.plugin_steps = Histogram(
            "securecore_plugin_flow_step_seconds",
            "Time a step of the plugin call flow took",
            ["step"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.plugin_step_outcomes = Counter(
            "securecore_plugin_flow_steps_total",
            "Steps of the plugin call flow, by outcome",
            ["step", "outcome"],
            registry=self.registry,
        )
        # REQ-IDS-4: each automatic response of the intrusion detector (lock_principal,
        # stop_transfer, end_session), as it is audited; alerted by roles/monitoring.
        self.intrusion_responses = Counter(
            "securecore_intrusion_responses_total",
            "Automatic intrusion responses applied, by action",
            ["action"],
            registry=self.registry,
        )
        # REQ-PERF-3: how long the service waits for an audit record to be durable (the
        # own writer's or, in a worker, the supervisor's), failures included; 0.05 is a
        # bucket bound, so the daily check's p99 against 50 ms is exact at the target.
        self.audit_writes = Histogram(
            "securecore_audit_write_seconds",
            "Time for an audit record to be durable, as the service waited for it",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.up = Gauge(
            "securecore_up",
            "1 while the service runs",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.up.set(1)
        self._collectors: list[Collector] = []

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_plugin_step(self, step: str, outcome: str, seconds: float) -> None:
        self.plugin_steps.labels(step).observe(seconds)
        self.plugin_step_outcomes.labels(step, outcome).inc()

    def timed_audit(self, append: Callable[P, int]) -> Callable[P, int]:
        """APPEND (AuditLog.append), each write timed into securecore_audit_write_seconds."""

        def timed(*args: P.args, **kwargs: P.kwargs) -> int:
            started = time.perf_counter()
            try:
                return append(*args, **kwargs)
            finally:
                self.audit_writes.observe(time.perf_counter() - started)

        return timed

    def timed_audit_async(self, append: Callable[P, Awaitable[int]]) -> Callable[P, Awaitable[int]]:
        """`timed_audit` for AuditLog.append_async."""

        async def timed(*args: P.args, **kwargs: P.kwargs) -> int:
            started = time.perf_counter()
            try:
                return await append(*args, **kwargs)
            finally:
                self.audit_writes.observe(time.perf_counter() - started)

        return timed

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)
        self._collectors.append(collector)

    def render(self) -> bytes:
        directory = os.environ.get(MULTIPROCESS_DIR)
        if not directory:
            return generate_latest(self.registry)
        # Every worker's files, plus the gauges read from the shared state.
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        for collector in self._collectors:
            registry.register(collector)
        return generate_latest(registry)


class LiveState(Collector):
    """Gauges read from the service's state at scrape time."""

    def __init__(
        self,
        sources: dict[str, Callable[[], dict[tuple[str, ...], float] | float]],
        labels: dict[str, list[str]],
        help_text: dict[str, str],
    ) -> None:
        self.sources, self.labels, self.help_text = sources, labels, help_text

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, source in self.sources.items():
            family = GaugeMetricFamily(name, self.help_text[name], labels=self.labels.get(name, []))
            value = source()
            if isinstance(value, dict):
                for label_values, number in value.items():
                    family.add_metric(list(label_values), number)
            else:
                family.add_metric([], value)
            yield family


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                template, scope["method"], status["code"], time.perf_counter() - started
            )
