"""Trust scores of plugins (REQ-SVC-4) and what they set off (REQ-SVC-5, REQ-MON-2).

REQ-SVC-4 names the factors - communication success rate, security
violations, days of uptime, authentication failures, vendor reputation - but
no formula. This one is documented, bounded and monotone in every factor:

    score = reputation    vendor_reputation (0-100) x 0.30         up to 30
          + reliability   success_rate x 40                        up to 40
          + tenure        min(uptime_days, 90) / 90 x 15           up to 15
          + new bonus     10 on day 0, falling to 0 at day 30      up to 10
          - violations    15 per security violation
          - auth          5 per authentication failure
    clamped to 0..100 and rounded.

A plugin without calls yet counts as fully reliable. Thresholds act:
critical alert and suspension at <= 30 (REQ-SVC-5), step-up
authentication below 40, a stricter rate limit below 50; a warning when the
success rate is at or below 90% (over at least `min_calls`); an info alert
for a new plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CRITICAL_SCORE = 30
STEP_UP_BELOW = 40
STRICT_RATE_LIMIT_BELOW = 50
SUCCESS_WARNING_AT = 0.90


@dataclass(frozen=True)
class TrustFactors:
    calls: int = 0
    successes: int = 0
    security_violations: int = 0
    uptime_days: int = 0
    auth_failures: int = 0
    vendor_reputation: int = 50

    @property
    def success_rate(self) -> float:
        return 1.0 if self.calls == 0 else self.successes / self.calls

    def validate(self) -> None:
        if not 0 <= self.vendor_reputation <= 100:
            raise ValueError(f"vendor_reputation {self.vendor_reputation}: 0-100")
        if (
            min(
                self.calls,
                self.successes,
                self.security_violations,
                self.uptime_days,
                self.auth_failures,
            )
            < 0
            or self.successes > self.calls
        ):
            raise ValueError("trust factors are counts: non-negative, successes <= calls")


def trust_score(factors: TrustFactors) -> int:
    factors.validate()
    score = (
        factors.vendor_reputation * 0.30
        + factors.success_rate * 40
        + min(factors.uptime_days, 90) / 90 * 15
        + max(0.0, 10 * (1 - factors.uptime_days / 30))
        - 15 * factors.security_violations
        - 5 * factors.auth_failures
    )
    return max(0, min(100, round(score)))


@dataclass(frozen=True)
class Alert:
    severity: str  # critical | warning | info
    code: str
    message: str


@dataclass(frozen=True)
class TrustAssessment:
    score: int
    actions: frozenset[str]
    alerts: tuple[Alert, ...] = field(default_factory=tuple)


def assess(
    plugin: str, factors: TrustFactors, *, new: bool = False, min_calls: int = 20
) -> TrustAssessment:
    score = trust_score(factors)
    actions: set[str] = set()
    alerts: list[Alert] = []
    if score <= CRITICAL_SCORE:
        actions.add("suspend")
        alerts.append(Alert("critical", "trust_critical", f"{plugin}: trust score {score} <= 30"))
    if score < STEP_UP_BELOW:
        actions.add("step_up_auth")
    if score < STRICT_RATE_LIMIT_BELOW:
        actions.add("strict_rate_limit")
    if factors.calls >= min_calls and factors.success_rate <= SUCCESS_WARNING_AT:
        alerts.append(
            Alert(
                "warning",
                "success_rate_low",
                f"{plugin}: success rate {factors.success_rate:.1%} <= 90%",
            )
        )
    if new:
        alerts.append(Alert("info", "plugin_new", f"{plugin}: registered, trust score {score}"))
    return TrustAssessment(score, frozenset(actions), tuple(alerts))
