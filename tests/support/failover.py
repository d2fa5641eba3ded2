"""The failover of the core tier under load: the database's primary host killed while
plain database clients commit and the core service answers requests on both hosts."""

from __future__ import annotations

import time

from securecore_lab.manager import Lab
from tests.support.database import (
    ADDRESS,
    DATA_NODES,
    SPEC,
    Load,
    healthy_leader,
    podman,
    wait_for_leader,
    wait_healthy,
)
from tests.support.service_load import ServiceLoad, lab_admin_receipts_logged, wait_ready


def kill_the_primary_under_load(hosts: dict) -> dict:
    """Kill the primary's container (a core host: its service instance dies with it)
    while WRITER commits through SERVICE_DSN on the other node and an administrator's
    client sends requests to both core hosts' service, start it again, and wait for a
    healthy cluster and both services ready. The figures: seconds to the new primary
    and to the old one's return as a replica, the writes acknowledged, the failed
    attempts and the longest wait a client saw (the window it noticed), the
    acknowledged writes missing afterwards, the roles at the end; and per core host
    the requests answered and failed and the longest gap between answers, with the
    receipts (audit record numbers) of answered requests missing from the log."""
    primary = healthy_leader(hosts)
    survivor = next(n for n in DATA_NODES if n != primary)
    serving = [ADDRESS[n] for n in DATA_NODES]  # the core service runs on the data nodes
    with Load(hosts[survivor]) as load, ServiceLoad(hosts["dmz-01"], serving) as requests:
        killed = time.monotonic()
        podman("kill", SPEC.container_name(primary))
        try:
            promoted = wait_for_leader(hosts[survivor], survivor, killed)
        finally:
            # The lost host comes back by itself once its container runs again:
            # Patroni rejoins it as a replica (pg_rewind where its history forked).
            Lab(SPEC, log=lambda _message: None).start(primary)
        roles = wait_healthy(hosts)
        rejoined = time.monotonic() - killed
        load.wait_for_acknowledgements(50)
        figures = load.finish()
        # The killed host's service starts with its container and serves again.
        wait_ready(hosts, list(DATA_NODES), ADDRESS)
        requests.wait_for_acknowledgements(20)
        service = requests.finish(lambda: lab_admin_receipts_logged(hosts[survivor]))
    return {
        "killed": primary,
        "promoted": survivor,
        "new_primary_after_s": round(promoted, 1),
        "rejoined_after_s": round(rejoined, 1),
        **figures,
        "roles_after": roles,
        "service": {"survivor": ADDRESS[survivor], "killed": ADDRESS[primary], **service},
    }
