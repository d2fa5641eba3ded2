"""/v1/replication/audit: the audit log, read by the standby to keep a verified copy.

GET /v1/replication/audit?after=SEQ&limit=N answers
  {"origin", "size", "records": [[seq, entry], ...], "checkpoints": [[size, note], ...],
   "public_keys": {kid: PEM}}
with the records after SEQ (at most N, 5000 at most), the signed checkpoints
that fall within them, and the public signing keys that check those
checkpoints (for information: the reader verifies with the keys pinned on its
own host and ignores these). Only another core host (a `core` certificate) or
an administrator may read it. The reader (securecore.audit.replica) trusts
none of it on its own: every record is re-hashed into its own tree, which must
match every signed checkpoint, so a history that changed is refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from cryptography.hazmat.primitives import serialization
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from securecore.audit.store import AuditStore
from securecore.server.api_schema import Endpoint, integer
from securecore.server.errors import error_response

MAX_RECORDS = 5000
MAX_SEQ = 2**63 - 1  # SQLite's and PostgreSQL's largest integer
READERS = frozenset({"core", "admin"})
ENDPOINTS = [
    Endpoint(
        "GET",
        "/v1/replication/audit",
        "Audit records after a sequence number, with their signed checkpoints (standby)",
        None,
        (200, 400, 403),
        ("replication",),
        {"after": integer(0, MAX_SEQ), "limit": integer(1, MAX_RECORDS)},
    ),
]


def audit_batch(store: AuditStore, after: int, limit: int) -> dict[str, Any]:
    records: list[list[Any]] = [
        [seq, entry.decode("utf-8")] for seq, entry in itertools.islice(store.entries(after), limit)
    ]
    last = records[-1][0] if records else after
    checkpoints = [[size, note] for size, note in store.checkpoints() if after < size <= last]
    return {"size": store.size(), "records": records, "checkpoints": checkpoints}


def replication_routes(
    open_store: Callable[[], AuditStore], public_keys: Callable[[], dict], origin: str
) -> list[Route]:
    async def audit(request: Request) -> Response:
        principal = request.state.principal
        if principal is None or principal.kind not in READERS:
            return error_response(
                403, "only core hosts and administrators read the audit log", "forbidden"
            )
        try:
            after = int(request.query_params.get("after", "0"))
            limit = int(request.query_params.get("limit", str(MAX_RECORDS)))
            if not 0 <= after <= MAX_SEQ or not 1 <= limit <= MAX_RECORDS:
                raise ValueError
        except ValueError:
            message = f"after: an integer 0-{MAX_SEQ}; limit: 1-{MAX_RECORDS}"
            return error_response(400, message, "invalid_request")

        def read() -> dict[str, Any]:
            store = open_store()
            try:
                batch = audit_batch(store, after, limit)
            finally:
                store.close()
            keys = {
                kid: key.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ).decode()
                for kid, key in public_keys().items()
            }
            return {"origin": origin, **batch, "public_keys": keys}

        return JSONResponse(await anyio.to_thread.run_sync(read))

    return [Route("/v1/replication/audit", audit, methods=["GET"])]
