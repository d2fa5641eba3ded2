"""Audit records and their canonical encoding (the Merkle leaf entry)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

# Keys whose values are secrets: never stored in clear (REQ-AUDIT-3).
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


# UTF-16 surrogate code points: a Python string (a JSON string parsed from
# "\ud800") may hold one alone, and UTF-8 cannot encode it.
SURROGATE = re.compile("[\ud800-\udfff]")


def canonical(value: dict[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8, non-ASCII as is, and no NaN or Infinity.

    Total over every string: a lone surrogate is written as its JSON escape
    (lowercase, e.g. \\ud800), which parses back to the same string. Pairs are
    joined into their character first, so an escaped surrogate is never
    followed by one that would pair with it: a verifier that parses the entry
    and re-encodes it by this rule gets the same bytes (docs/audit-export.md).
    (Strings parsed from JSON never hold an unjoined pair, so their keys sort
    the same on both sides.)
    Raises TypeError or ValueError for what is not JSON (the caller's record
    is refused; nothing is written).
    """
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        return text.encode()
    except UnicodeEncodeError:
        return escape_surrogates(text).encode()


def entry_parts(
    actor: str, action: str, target: str, outcome: str, details: dict[str, Any]
) -> tuple[bytes, bytes]:
    """A record's canonical entry without its seq and timestamp, in the two pieces
    they go between (the keys sort action, actor, details, outcome, seq, target,
    timestamp). Encoded once, by the appender, which learns there whether its
    record encodes; the writer only joins the pieces (join_entry). Each piece is
    canonical() of its own keys: escaping never reaches across a key."""
    head = canonical({"action": action, "actor": actor, "details": details, "outcome": outcome})
    target_part = canonical({"target": target})
    return head[:-1], target_part[1:-1]


def join_entry(parts: tuple[bytes, bytes], seq: int, timestamp: str) -> bytes:
    """canonical() of the whole record: PARTS (entry_parts) with SEQ and TIMESTAMP
    (an ISO 8601 time: ASCII that JSON writes as is)."""
    head, target = parts
    return b'%s,"seq":%d,%s,"timestamp":"%s"}' % (head, seq, target, timestamp.encode("ascii"))


def escape_surrogates(text: str) -> str:
    """TEXT (JSON) with surrogate pairs joined and lone surrogates as \\uXXXX escapes."""
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return SURROGATE.sub(lambda match: f"\\u{ord(match[0]):04x}", joined)


def protect_details(details: dict[str, Any], hmac_key: bytes) -> dict[str, Any]:
    """Replace secret values by an HMAC: equal secrets stay comparable, none is readable."""

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        if key and SECRET_KEY.search(key) and value is not None:
            # surrogatepass: any string (even one with a lone surrogate) has one HMAC.
            secret = str(value).encode("utf-8", "surrogatepass")
            digest = hmac.new(hmac_key, secret, hashlib.sha256).hexdigest()
            return f"hmac-sha256:{digest[:32]}"
        return value

    return walk(details)
