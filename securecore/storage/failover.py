"""How long a core host waits for the shared database's new primary (REQ-HA-15).

A planned switchover leaves the cluster without a primary for a second or two,
the loss of the primary's host for up to Patroni's TTL. For this long after a
database connection ends, the state database (securecore.storage.state_db) and
the audit writer (securecore.audit.log, cluster mode) keep requests waiting
while they find the new primary, instead of failing them; after it, requests
fail at once (503) until the database is back, so that a longer outage does not
hold every request for the whole wait. Read as `failover.WAIT_SECONDS` at each
use, so that a test can shorten it.
"""

from __future__ import annotations

WAIT_SECONDS = 10.0
