"""Shared counters (token buckets, transfer windows) and the cached policy state."""

from __future__ import annotations

from pathlib import Path

import pytest

from securecore.policy.counters import CounterFileError, SharedCounters
from securecore.policy.state import PolicyState


def test_bucket_refills_at_its_rate_and_says_when_to_retry(tmp_path: Path) -> None:
    counters = SharedCounters(tmp_path / "c", slots=64)
    assert all(counters.take("k", rate=2, burst=3, now=100.0).allowed for _ in range(3))
    refused = counters.take("k", rate=2, burst=3, now=100.0)
    assert not refused.allowed and refused.retry_after == pytest.approx(0.5)
    assert counters.take("k", rate=2, burst=3, now=100.5).allowed  # one token back
    assert not counters.take("k", rate=2, burst=3, now=100.5).allowed


def test_two_handles_on_one_file_share_the_counts(tmp_path: Path) -> None:
    first, second = SharedCounters(tmp_path / "c"), SharedCounters(tmp_path / "c")
    assert first.add("transfer:x", 40, now=1000.0, window=60) == 40
    assert second.add("transfer:x", 2, now=1001.0, window=60) == 42
    assert first.take("b", rate=1, burst=1, now=5.0).allowed
    assert not second.take("b", rate=1, burst=1, now=5.0).allowed


def test_window_forgets_after_a_minute_and_a_granule_never_before(tmp_path: Path) -> None:
    counters = SharedCounters(tmp_path / "c")
    counters.add("w", 10, now=1200.0, window=60)
    assert counters.add("w", 0, now=1259.9, window=60) == 10
    assert counters.add("w", 0, now=1264.9, window=60) == 10
    assert counters.add("w", 0, now=1265.0, window=60) == 0
    counters.add("w", 7, now=5000.0, window=60)  # long idle: starts empty
    assert counters.add("w", 0, now=5001.0, window=60) == 7


def test_a_full_table_reuses_the_slot_idle_longest(tmp_path: Path) -> None:
    counters = SharedCounters(tmp_path / "c", slots=4)
    for index, key in enumerate("abcd"):
        counters.add(key, 1, now=1000.0 + index, window=60)
    counters.add("e", 5, now=1010.0, window=60)  # the table is full: "a" is evicted
    assert counters.add("e", 0, now=1010.0, window=60) == 5
    assert counters.add("d", 0, now=1010.0, window=60) == 1
    assert counters.add("a", 0, now=1011.0, window=60) == 0


def test_an_existing_table_keeps_its_size_and_a_foreign_file_is_refused(tmp_path: Path) -> None:
    SharedCounters(tmp_path / "c", slots=8).add("k", 3, now=10.0, window=60)
    reopened = SharedCounters(tmp_path / "c", slots=1024)
    assert reopened.slots == 8 and reopened.add("k", 0, now=11.0, window=60) == 3
    (tmp_path / "other").write_bytes(b"not a counter file at all, but something else")
    with pytest.raises(CounterFileError, match="other: not a securecore counter file"):
        SharedCounters(tmp_path / "other")
    with pytest.raises(ValueError, match="power of two"):
        SharedCounters(tmp_path / "d", slots=6)


def test_a_block_by_another_process_applies_on_the_next_request(tmp_path: Path) -> None:
    worker, operator = PolicyState(tmp_path / "policy.db"), PolicyState(tmp_path / "policy.db")
    assert worker.blocked("ip", "10.0.0.9", now=100.0) is None
    assert worker.mode("shutdown", "off") == "off"
    operator.block("ip", "10.0.0.9", until=200.0, reason="scanner")
    operator.set_mode("shutdown", "on")
    assert worker.blocked("ip", "10.0.0.9", now=100.0) == "scanner"
    assert worker.blocked("ip", "10.0.0.9", now=200.0) is None  # expired
    assert worker.mode("shutdown", "off") == "on"
    operator.unblock("ip", "10.0.0.9")
    worker.block("ip", "10.0.0.8", until=300.0, reason="own write")
    assert worker.blocked("ip", "10.0.0.9", now=100.0) is None
    assert worker.blocked("ip", "10.0.0.8", now=100.0) == "own write"
