"""JSON Lines export of the audit log, checkable with the public keys alone.

Format `securecore-audit-export/1` (docs/audit-export.md): one JSON object
per line.
  {"type": "header", "format": "securecore-audit-export/1", "origin": ..., "size": N}
  {"type": "record", "seq": 1, "record": {...}}         one per record, in order
  {"type": "checkpoint", "size": n, "note": "..."}       every signed checkpoint
A verifier rebuilds each record's canonical JSON (keys sorted, separators ","
and ":", UTF-8, no ASCII escaping but for lone surrogates), hashes it as an RFC 9162 leaf, computes
the tree head at every checkpoint's size and checks the checkpoint's ECDSA
signature (C2SP signed note, type 0x02) with the public key it trusts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from securecore.audit.record import canonical
from securecore.audit.store import AuditStore

FORMAT = "securecore-audit-export/1"


def export_lines(store: AuditStore, origin: str) -> Iterator[str]:
    def line(value: dict) -> str:
        # The records' own encoding: a lone surrogate stays an escape (UTF-8 has none).
        return canonical(value).decode()

    yield line({"type": "header", "format": FORMAT, "origin": origin, "size": store.size()})
    for seq, entry in store.entries():
        yield line({"type": "record", "seq": seq, "record": json.loads(entry)})
    for size, note in store.checkpoints():
        yield line({"type": "checkpoint", "size": size, "note": note})
