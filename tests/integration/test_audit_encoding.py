"""Any value can reach an audit record without stopping the writer; the log still verifies.

A real AuditLog (SQLite, witness directory, software signing key): strings
that UTF-8 cannot encode are recorded in a canonical, verifiable form, and a
value that is no JSON at all fails its own caller, never the writer.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from securecore.audit.export import export_lines
from securecore.audit.log import AuditError
from securecore.audit.record import canonical
from securecore.audit.store import SQLiteAuditStore
from tests.support.auditlog import open_log, verify
from tests.support.commands import outside_verifier

AWKWARD = ["\ud800", "a\udfffb", "\udc00\ud800", "\ud800\ud800\udc00", "é😀", "\ud83d\ude00"]


def test_strings_utf8_cannot_hold_are_recorded_and_verify(tmp_path: Path, keys) -> None:
    log = open_log(tmp_path, keys, checkpoint_every=4)
    for value in AWKWARD:
        log.append(
            value,
            "plugin.register.request",
            value,
            "failure",
            {value: [value], "detail": value, "password": value},
        )

    async def from_the_loop() -> int:
        return await log.append_async("admin/x", "policy.acl", "\ud800", "allowed", {})

    assert asyncio.run(from_the_loop()) == len(AWKWARD) + 1
    log.check()  # the writer runs on
    log.close()
    result = verify(tmp_path, keys)
    assert result.ok and result.size == len(AWKWARD) + 1, result
    store = SQLiteAuditStore(tmp_path / "audit.db")
    try:
        entries = [entry for _, entry in store.entries()]
        lines = list(export_lines(store, "securecore.test/audit"))
    finally:
        store.close()
    # Stored as valid UTF-8, the lone surrogate as its escape, and the secret as an HMAC.
    first = entries[0].decode("utf-8")
    assert '"actor":"\\ud800"' in first and '"password":"hmac-sha256:' in first
    for entry in entries:
        assert canonical(json.loads(entry)) == entry  # parsed and encoded again: the same bytes
    # The documented export checks out with the public key alone.
    public = keys.public_key(f"securecore-signing-v{keys.versions('securecore-signing')[-1]}")
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    assert outside_verifier(lines, pem) >= 1
    # Opened again (a restart): recovered from what is stored, and still verifying.
    open_log(tmp_path, keys).close()
    assert verify(tmp_path, keys).ok


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (("a", "x", "t", "success", {"value": object()}), "not JSON serializable"),
        (("a", "x", "t", "success", {"ratio": float("nan")}), "not JSON compliant"),
        ((5, "x", "t", "success", {}), "actor must be a string"),
        (("a", "x", "t", "success", {1: "x", "b": 2}), "expected string"),
    ],
)
def test_a_record_that_is_no_json_fails_its_caller_only(tmp_path: Path, keys, record, problem):
    log = open_log(tmp_path, keys)
    assert log.append("admin/a", "before", "core", "success") == 1
    with pytest.raises(AuditError, match=problem):
        log.append(*record)
    # No sequence number was spent and the writer goes on.
    log.check()
    assert log.append("admin/a", "after", "core", "success") == 2
    log.close()
    assert verify(tmp_path, keys).ok


def test_a_writer_failure_is_reported_and_every_later_append_refused(tmp_path: Path, keys):
    log = open_log(tmp_path, keys)
    seen: list[BaseException] = []
    log.on_failure(seen.append)
    log.store.close()  # the next commit fails, as a disk that went away would
    with pytest.raises(AuditError, match="audit write failed"):
        log.append("admin/a", "x", "core", "success")
    deadline = time.monotonic() + 5  # the writer thread tells it right after its appenders
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(seen) == 1
    with pytest.raises(AuditError, match="stopped after an error"):
        log.check()
    with pytest.raises(AuditError, match="stopped after an error"):
        log.append("admin/a", "y", "core", "success")
    late: list[BaseException] = []
    log.on_failure(late.append)  # told at once
    assert late == seen
