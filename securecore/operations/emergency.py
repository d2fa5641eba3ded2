"""Emergency shutdown, the state side (REQ-EMERG-2): what recovery needs, written first.

Before the service stops in an emergency, it records why (an audit record,
durable like every other) and writes a snapshot of what is needed to recover:
the audit log's size and latest signed checkpoint, the key versions in use and
a hash of the configuration. The snapshot is written atomically (temporary
file, fsync, rename), so a crash leaves either the old snapshot or the new one.
The service wires the trigger; `securecore emergency-snapshot` runs it
by hand.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path

from securecore.audit.log import AuditLog
from securecore.audit.writer_service import RemoteAuditLog
from securecore.config import Config
from securecore.errors import SecureCoreError
from securecore.keys.base import KeyRing


class EmergencyError(SecureCoreError):
    """The snapshot cannot be written as asked."""


def write_emergency_snapshot(
    config: Config, ring: KeyRing, log: AuditLog | RemoteAuditLog, *, reason: str, actor: str
) -> Path:
    if not reason.strip():
        raise EmergencyError("an emergency shutdown needs a reason (--reason)")
    seq = log.append(actor, "emergency.shutdown", "securecore", "initiated", {"reason": reason})
    # The shutdown record itself is covered by a signed checkpoint before we go.
    size = log.checkpoint_now()
    snapshot = {
        "format": "securecore-emergency-snapshot/1",
        "time": datetime.datetime.now(datetime.UTC).isoformat(),
        "reason": reason,
        "actor": actor,
        "audit_record": seq,
        "audit_size": size,
        "latest_checkpoint": log.latest_checkpoint(),
        "keys_in_use": {
            "signing": ring.current(ring.signing_key),
            "kek": ring.current(ring.kek),
        },
        "config_sha256": hashlib.sha256(config.path.read_bytes()).hexdigest(),
    }
    directory = Path(config.get("service", "data_dir")) / "emergency"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / "snapshot.json"
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(snapshot, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the rename itself is durable
    finally:
        os.close(descriptor)
    return path
