"""An audit entry joined from the pieces its appender encoded is the canonical encoding
of the whole record, byte for byte: the Merkle leaf and every verifier depend on it."""

from __future__ import annotations

import datetime
import json

import pytest

from securecore.audit.record import canonical, entry_parts, join_entry

DETAILS = [
    {},
    {"reason": "", "policy_version": "0123456789ab", "source": "10.0.0.1"},
    # Keys that sort around the record's own keys, and nesting.
    {"seq": 5, "target": "x", "timestamp": "t", "zz": {"b": [1, 2.5, None, True], "a": {}}},
    {'quote"and\\backslash': "line\nbreak\ttab\u0000nul", "é": "😀"},
    {"lone": "\ud800", "pair": "\ud83d\ude00", "end": "a\udfff"},
]
STRINGS = ["core", "", '"', "\\", "\ud800", "a\udfffb", "\ud800\udc00", "é😀", "\u2028"]


@pytest.mark.parametrize("details", DETAILS)
@pytest.mark.parametrize("text", STRINGS)
def test_a_joined_entry_is_the_canonical_encoding_of_the_record(details, text) -> None:
    timestamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
    record = {
        "seq": 123456789,
        "timestamp": timestamp,
        "actor": text,
        "action": "policy.acl",
        "target": text,
        "outcome": text,
        "details": {**details, "value": text},
    }
    parts = entry_parts(text, "policy.acl", text, text, {**details, "value": text})
    joined = join_entry(parts, 123456789, timestamp)
    assert joined == canonical(record)
    assert canonical(json.loads(joined)) == joined  # what a verifier does
