"""The policy engine on a real SQLite policy state: every stage refuses what it should."""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import pytest

from securecore.policy.acl import AclRules
from securecore.policy.engine import Policy, PolicyEngine, RequestContext
from securecore.policy.intrusion import IntrusionDetector
from securecore.policy.ratelimit import Limit
from securecore.policy.state import PolicyState

# Monday 2026-11-23 10:00 UTC
MONDAY_10 = datetime.datetime(2026, 11, 23, 10, 0, tzinfo=datetime.UTC).timestamp()


class Clock:
    def __init__(self, now: float = MONDAY_10) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state(tmp_path: Path) -> PolicyState:
    value = PolicyState(tmp_path / "policy.db")
    yield value
    value.close()


def engine(state, clock, audited=None, **policy) -> PolicyEngine:
    data = {
        "acl": {
            "allow": ["10.0.0.0/8", "192.168.0.0/16"],
            "deny": ["10.66.0.0/16"],
            "regions": {"10.0.0.0/8": "eu-central", "192.168.0.0/16": "us-east"},
            "allowed_regions": ["eu-central"],
            "windows": [
                {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "06:00", "end": "22:00"}
            ],
        },
        "client_limit": {"rate": 1, "burst": 3},
        "plugin_limit": {"rate": 1, "burst": 4},
        **policy,
    }
    sink = audited if audited is not None else []
    return PolicyEngine(
        Policy.from_mapping(data), state, audit=lambda *r: sink.append(r), clock=clock
    )


def ctx(**changes) -> RequestContext:
    values = {"source": "10.1.2.3", "principal": "admin/alice"}
    return RequestContext(**{**values, **changes})


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("10.66.1.1", "in a denied network"),
        ("172.16.0.1", "not in an allowed network"),
        ("192.168.1.1", "region us-east, not allowed"),
    ],
)
def test_acl_refuses_by_network_and_region(state, source, reason) -> None:
    decision = engine(state, Clock()).decide(ctx(source=source))
    assert not decision.allowed and decision.stage == "acl" and reason in decision.reason


def test_acl_time_windows(state) -> None:
    saturday = Clock(MONDAY_10 + 5 * 86400)
    decision = engine(state, saturday).decide(ctx())
    assert (
        not decision.allowed
        and "outside the allowed time windows (Sat 10:00 UTC)" in decision.reason
    )
    night = Clock(MONDAY_10 + 13 * 3600)  # 23:00
    assert not engine(state, night).decide(ctx()).allowed
    assert engine(state, Clock()).decide(ctx()).allowed


def test_every_decision_is_audited_with_the_policy_version(state) -> None:
    audited: list = []
    policy_engine = engine(state, Clock(), audited)
    policy_engine.decide(ctx())
    policy_engine.decide(ctx(source="10.66.0.9"))
    assert [r[3] for r in audited] == ["allowed", "denied"]
    assert audited[1][1] == "policy.acl"
    assert audited[0][4]["policy_version"] == policy_engine.policy.version
    other = engine(state, Clock(), client_limit={"rate": 2, "burst": 3})
    assert other.policy.version != policy_engine.policy.version


def test_five_failed_logins_in_five_minutes_lock_the_principal(state) -> None:
    clock = Clock()
    detector = IntrusionDetector(state)
    for minute in range(4):
        assert detector.login_failed("admin/bob", f"10.0.0.{minute}", clock.now + minute * 60) == []
    responses = detector.login_failed("admin/bob", "10.0.0.9", clock.now + 250)
    assert [(r.action, r.kind, r.until) for r in responses] == [
        ("lock_principal", "principal", clock.now + 250 + 900)
    ]
    clock.now += 260
    decision = engine(state, clock).decide(ctx(principal="admin/bob"))
    assert not decision.allowed and decision.stage == "intrusion"
    assert [b["kind"] for b in state.active_blocks(clock.now)] == ["principal"]
    # Failures spread over more than five minutes lock nothing.
    for minute in range(5):
        assert detector.login_failed("admin/carol", "10.0.1.1", clock.now + minute * 90) == []


def test_failing_principals_never_block_their_address_or_anyone_else(state) -> None:
    """Ten principals fail from one address (a NAT, a bastion) within a minute:
    each is locked, the address is not, and an administrator there works on."""
    clock = Clock()
    detector = IntrusionDetector(state)
    responses = []
    for i in range(10):
        for attempt in range(5):
            responses += detector.login_failed(f"dmz/web-{i}", "10.9.0.1", clock.now + attempt)
    assert {(r.action, r.subject) for r in responses} == {
        ("lock_principal", f"dmz/web-{i}") for i in range(10)
    }
    assert not [b for b in state.active_blocks(clock.now) if b["kind"] == "ip"]
    policy_engine = engine(state, clock)
    assert policy_engine.decide(ctx(source="10.9.0.1", principal="admin/alice")).allowed
    refused = policy_engine.decide(ctx(source="10.9.0.1", principal="dmz/web-3"))
    assert not refused.allowed and refused.stage == "intrusion"


def test_the_transfer_limit_holds_over_two_serving_hosts(tmp_path: Path) -> None:
    """Two hosts on one state database, each with its own counters (as in a cluster):
    a principal moving data through both alternately is stopped before the two
    together pass 100 MB, and the stop holds on both; all through one host, it is
    stopped at that host's share."""
    mb = 1024 * 1024
    database = tmp_path / "policy.db"
    hosts = [
        IntrusionDetector(PolicyState(database, tmp_path / f"{name}.counters"), serving_hosts=2)
        for name in ("a", "b")
    ]
    moved, stopped = 0, []
    for i in range(30):
        stopped = hosts[i % 2].transferred("plugin/p", 10 * mb, MONDAY_10 + i)
        if stopped:
            break
        moved += 10 * mb
    assert stopped and stopped[0].action == "stop_transfer", moved
    assert moved <= 100 * mb, moved
    assert "this host's share 50 MB" in stopped[0].reason, stopped[0].reason
    for host in hosts:
        assert host.state.blocked("client", "plugin/p", MONDAY_10 + 40)
    # One host alone: its share, then stopped.
    assert hosts[0].transferred("plugin/q", 50 * mb, MONDAY_10) == []
    assert hosts[0].transferred("plugin/q", 1, MONDAY_10 + 1)[0].action == "stop_transfer"
    for host in hosts:
        host.state.close()
    with pytest.raises(ValueError, match="serving_hosts must be at least 1"):
        IntrusionDetector(PolicyState(database, tmp_path / "c.counters"), serving_hosts=0)


def test_more_than_100_mb_a_minute_stops_the_transfer(state) -> None:
    detector = IntrusionDetector(state)
    mb = 1024 * 1024
    assert detector.transferred("plugin/p", 60 * mb, MONDAY_10) == []
    assert detector.transferred("plugin/p", 30 * mb, MONDAY_10 + 30) == []
    assert [r.action for r in detector.transferred("plugin/p", 20 * mb, MONDAY_10 + 50)] == [
        "stop_transfer"
    ]
    # Bytes count for at least a minute and at most one 5-second granule more
    # (never forgotten early), then the window has moved on.
    assert detector.transferred("plugin/q", 90 * mb, MONDAY_10) == []
    assert detector.transferred("plugin/r", 90 * mb, MONDAY_10) == []
    assert detector.transferred("plugin/q", 20 * mb, MONDAY_10 + 61)[0].action == "stop_transfer"
    assert detector.transferred("plugin/r", 90 * mb, MONDAY_10 + 65) == []


def test_privilege_escalation_locks_the_principal_until_an_operator_clears_it(state) -> None:
    responses = IntrusionDetector(state).privilege_escalation(
        "plugin/p", "GET /v1/admin/acl", MONDAY_10
    )
    assert [(r.action, r.kind, r.until) for r in responses] == [
        ("end_session", "principal", math.inf)
    ]
    a_year_later = Clock(MONDAY_10 + 365 * 86400)
    decision = engine(state, a_year_later).decide(ctx(principal="plugin/p"))
    assert not decision.allowed and "principal plugin/p is blocked: privilege" in decision.reason
    [listed] = state.active_blocks(a_year_later.now)
    assert listed["until"] is None and listed["subject"] == "plugin/p"
    # A shorter lock later (failed logins) neither shortens it nor replaces its reason.
    state.block("principal", "plugin/p", MONDAY_10 + 900, "5 failed logins")
    assert state.blocked("principal", "plugin/p", a_year_later.now).startswith("privilege")
    assert state.unblock(("principal", "client"), "plugin/p") == 1
    assert engine(state, a_year_later).decide(ctx(principal="plugin/p")).allowed


def test_rate_limits_refill_and_emergency_mode_cuts_them(state) -> None:
    clock = Clock()
    policy_engine = engine(state, clock)
    assert [policy_engine.decide(ctx()).allowed for _ in range(4)] == [True, True, True, False]
    refused = policy_engine.decide(ctx())
    assert refused.stage == "rate_limit" and refused.retry_after > 0
    clock.now += 2
    assert policy_engine.decide(ctx()).allowed
    state.set_mode("emergency", "on")
    clock.now += 100  # a full bucket again, but a tenth of it in emergency mode
    assert [policy_engine.decide(ctx(principal="admin/dan")).allowed for _ in range(2)] == [
        True,
        False,
    ]


def test_trust_stage_refuses_suspended_plugins_and_asks_for_step_up(state) -> None:
    policy_engine = engine(state, Clock())
    suspended = policy_engine.decide(ctx(plugin="tickets", plugin_state="suspended"))
    assert not suspended.allowed and suspended.stage == "trust"
    step_up = frozenset({"step_up_auth", "strict_rate_limit"})
    asked = policy_engine.decide(
        ctx(principal="admin/eve", plugin="tickets", plugin_state="active", trust_actions=step_up)
    )
    assert not asked.allowed and "step-up authentication required" in asked.reason
    done = policy_engine.decide(
        ctx(
            principal="admin/fay",
            plugin="tickets",
            plugin_state="active",
            trust_actions=step_up,
            step_up_done=True,
        )
    )
    assert done.allowed


def test_bad_policy_input_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"acl\.allow"):
        AclRules.from_mapping({"allow": ["10.0.0.0/33"]})
    with pytest.raises(ValueError, match=r"acl.windows\[0\]"):
        AclRules.from_mapping({"windows": [{"start": "25:00", "end": "26:00"}]})
    assert Limit(1, 1).rate == 1
