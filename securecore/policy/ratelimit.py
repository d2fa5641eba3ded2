"""Token-bucket rate limits shared by every worker (REQ-RATE-1..3).

A bucket per client and per plugin lives in the shared counters of the
policy state (counters.py), so the limit holds across worker processes.
Adaptive: under load (0..1, the share of capacity in use) the rates fall
linearly to half between 70% and 100%. Emergency mode divides every limit by
ten; a plugin whose trust asks for it gets half its rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from securecore.policy.counters import Verdict
from securecore.policy.state import PolicyState

EMERGENCY_DIVISOR = 10


@dataclass(frozen=True)
class Limit:
    rate: float  # tokens per second
    burst: float  # bucket size


def scaled(
    limit: Limit, *, load: float = 0.0, emergency: bool = False, strict: bool = False
) -> Limit:
    factor = 1.0 - 0.5 * min(1.0, max(0.0, (load - 0.7) / 0.3))
    if emergency:
        factor /= EMERGENCY_DIVISOR
    if strict:
        factor /= 2
    return Limit(limit.rate * factor, max(1.0, limit.burst * factor))


def take(state: PolicyState, key: str, limit: Limit, now: float, cost: float = 1.0) -> Verdict:
    return state.counters.take(key, limit.rate, limit.burst, now, cost)
