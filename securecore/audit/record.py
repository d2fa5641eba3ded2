"""Audit records and their canonical encoding (the Merkle leaf entry)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

# Keys whose values are secrets: never stored in clear (seed 001 3.3).
SECRET_KEY = re.compile(
    r"(pass(word|phrase)?|pin|secret|token|api[_-]?key|private|credential)", re.I
)


@dataclass(frozen=True)
class Record:
    seq: int
    timestamp: str
    actor: str
    action: str
    target: str
    outcome: str
    details: dict[str, Any]

    def entry(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces, UTF-8): what the Merkle leaf hashes."""
        return canonical(asdict(self))

    @classmethod
    def from_entry(cls, entry: bytes) -> Record:
        return cls(**json.loads(entry))


def canonical(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def protect_details(details: dict[str, Any], hmac_key: bytes) -> dict[str, Any]:
    """Replace secret values by an HMAC: equal secrets stay comparable, none is readable."""

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        if key and SECRET_KEY.search(key) and value is not None:
            digest = hmac.new(hmac_key, str(value).encode(), hashlib.sha256).hexdigest()
            return f"hmac-sha256:{digest[:32]}"
        return value

    return walk(details)
