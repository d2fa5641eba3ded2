"""Token-bucket rate limits shared by every worker (seed 000 5.2).

A bucket per client and per plugin lives in the policy database; taking a
token is one IMMEDIATE transaction, so the limit holds across processes.
Adaptive: under load (0..1, the share of capacity in use) the rates fall
linearly to half between 70% and 100%. Emergency mode divides every limit by
ten; a plugin whose trust asks for it gets half its rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from securecore.policy.state import PolicyState
from securecore.transactions import immediate_transaction

EMERGENCY_DIVISOR = 10


@dataclass(frozen=True)
class Limit:
    rate: float  # tokens per second
    burst: float  # bucket size


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: float = 0.0


def scaled(limit: Limit, *, load: float = 0.0, emergency: bool = False, strict: bool = False):
    factor = 1.0 - 0.5 * min(1.0, max(0.0, (load - 0.7) / 0.3))
    if emergency:
        factor /= EMERGENCY_DIVISOR
    if strict:
        factor /= 2
    return Limit(limit.rate * factor, max(1.0, limit.burst * factor))


def take(state: PolicyState, key: str, limit: Limit, now: float, cost: float = 1.0) -> Verdict:
    with state.lock, immediate_transaction(state.db):
        row = state.db.execute(
            "SELECT tokens, updated FROM buckets WHERE key = ?", (key,)
        ).fetchone()
        tokens = (
            limit.burst if row is None else min(limit.burst, row[0] + (now - row[1]) * limit.rate)
        )
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        state.db.execute(
            "INSERT INTO buckets VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE "
            "SET tokens = excluded.tokens, updated = excluded.updated",
            (key, tokens, now),
        )
    return Verdict(True) if allowed else Verdict(False, (cost - tokens) / limit.rate)
