"""The trust score formula and its thresholds (securecore.plugin_registry.trust)."""

from __future__ import annotations

import itertools

import pytest

from securecore.plugin_registry.trust import TrustFactors, assess, trust_score


def test_documented_values() -> None:
    # A new plugin of a vendor with reputation 80: 24 + 40 + 0 + 10.
    assert trust_score(TrustFactors(vendor_reputation=80)) == 74
    # Ninety days later, all calls successful: the bonus is gone, tenure is full.
    assert trust_score(TrustFactors(100, 100, 0, 90, 0, 80)) == 79
    # 50% success, two violations, three auth failures: 24 + 20 + 15 - 30 - 15.
    assert trust_score(TrustFactors(100, 50, 2, 90, 3, 80)) == 14


def test_scores_stay_within_0_and_100() -> None:
    assert trust_score(TrustFactors(0, 0, 0, 0, 0, 100)) == 80
    assert trust_score(TrustFactors(10, 0, 50, 0, 50, 0)) == 0


@pytest.mark.parametrize("factor", ["security_violations", "auth_failures"])
def test_more_violations_or_auth_failures_never_raise_the_score(factor: str) -> None:
    scores = [trust_score(TrustFactors(vendor_reputation=90, **{factor: n})) for n in range(10)]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]


def test_more_successes_and_reputation_never_lower_the_score() -> None:
    for successes, reputation in itertools.product(range(0, 101, 10), range(0, 101, 25)):
        base = trust_score(TrustFactors(100, successes, 0, 40, 0, reputation))
        assert (
            trust_score(TrustFactors(100, min(100, successes + 10), 0, 40, 0, reputation)) >= base
        )
        assert (
            trust_score(TrustFactors(100, successes, 0, 40, 0, min(100, reputation + 25))) >= base
        )


def test_thresholds_act() -> None:
    new = assess("demo", TrustFactors(vendor_reputation=80), new=True)
    assert new.actions == frozenset() and [a.code for a in new.alerts] == ["plugin_new"]
    shaky = assess("demo", TrustFactors(30, 27, 0, 90, 0, 80))  # 90% success
    assert [a.severity for a in shaky.alerts] == ["warning"]
    stricter = assess("demo", TrustFactors(100, 100, 2, 90, 0, 80))  # 49
    assert stricter.actions == {"strict_rate_limit"}
    step_up = assess("demo", TrustFactors(100, 100, 2, 90, 2, 80))  # 39
    assert step_up.actions == {"strict_rate_limit", "step_up_auth"}
    critical = assess("demo", TrustFactors(100, 100, 3, 90, 0, 80))  # 34 -> not yet
    assert "suspend" not in critical.actions
    suspended = assess("demo", TrustFactors(100, 90, 3, 90, 1, 80))  # 25
    assert "suspend" in suspended.actions
    assert any(a.severity == "critical" for a in suspended.alerts)


def test_bad_factors_are_refused() -> None:
    with pytest.raises(ValueError, match="vendor_reputation 101"):
        trust_score(TrustFactors(vendor_reputation=101))
    with pytest.raises(ValueError, match="successes <= calls"):
        trust_score(TrustFactors(calls=1, successes=2))
