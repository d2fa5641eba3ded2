"""Series the service exports for the site's alerts (roles/monitoring): automatic intrusion
responses and the witnesses' cosignatures."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from unittest import mock

import pytest
from prometheus_client.parser import text_string_to_metric_families

from securecore.monitoring.metrics import ServiceMetrics
from securecore.policy.intrusion import IntrusionDetector
from securecore.policy.state import PolicyState
from securecore.server.intrusion_hooks import IntrusionResponder
from securecore.server.live_metrics import witness_cosignatures


def samples(metrics: ServiceMetrics, name: str) -> dict[tuple, float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_each_automatic_intrusion_response_is_counted_by_action(tmp_path: Path) -> None:
    metrics = ServiceMetrics()
    responder = IntrusionResponder(
        IntrusionDetector(PolicyState(tmp_path / "policy.db")),
        None,
        lambda *record: None,
        clock=lambda: 1000.0,
        counted=lambda action: metrics.intrusion_responses.labels(action).inc(),
    )
    for _ in range(4):
        responder.authentication_failed("plugin/p", "10.0.0.9", "bad_token")
    assert samples(metrics, "securecore_intrusion_responses_total") == {}
    responder.authentication_failed("plugin/p", "10.0.0.9", "bad_token")  # the 5th (REQ-IDS-1)
    counted = samples(metrics, "securecore_intrusion_responses_total")
    assert counted == {(("action", "lock_principal"),): 1.0}


def test_the_witnesses_cosignatures_come_from_the_pusher_s_status(tmp_path: Path) -> None:
    status = tmp_path / "witness-status.json"
    assert witness_cosignatures(status) == {"size": {}, "time": {}}
    status.write_text(
        json.dumps(
            {
                "mgmt-01/securecore/witness": {"size": 120, "cosigned_at": 1700000000.5},
                # Never cosigned (down since the start): no series, so no false freshness.
                "core-03/securecore/witness": {"size": None, "cosigned_at": None},
            }
        )
    )
    found = witness_cosignatures(status)
    assert found["size"] == {("mgmt-01/securecore/witness",): 120.0}
    assert found["time"] == {("mgmt-01/securecore/witness",): 1700000000.5}
    status.write_text("{not json")
    assert witness_cosignatures(status) == {"size": {}, "time": {}}


def test_every_audit_write_is_timed_failures_included() -> None:
    # REQ-PERF-3: the daily check holds the p99 of securecore_audit_write_seconds to 50 ms.
    metrics = ServiceMetrics()
    clock = iter([10.0, 10.004, 20.0, 20.2, 30.0, 30.03])

    def durable(*record: object) -> int:
        return 7

    def failing(*record: object) -> int:
        raise OSError("disk full")

    async def durable_async(*record: object) -> int:
        return 8

    with mock.patch("securecore.monitoring.metrics.time.perf_counter", lambda: next(clock)):
        assert metrics.timed_audit(durable)("a", "b", "c", "success", None) == 7
        with pytest.raises(OSError):
            metrics.timed_audit(failing)("a", "b", "c", "success", None)
        timed = metrics.timed_audit_async(durable_async)
        assert asyncio.run(timed("a", "b", "c", "success", None)) == 8
    buckets = {
        dict(labels)["le"]: value
        for labels, value in samples(metrics, "securecore_audit_write_seconds_bucket").items()
    }
    assert (buckets["0.005"], buckets["0.05"], buckets["0.25"], buckets["+Inf"]) == (1, 2, 3, 3)
    assert samples(metrics, "securecore_audit_write_seconds_count") == {(): 3.0}
