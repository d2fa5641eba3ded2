"""Rate limits, lockouts and blocks across the hosts of a cluster (REQ-HA-2).

Two `securecore serve` processes on one PostgreSQL database (cluster mode), one
site CA, `[policy] serving_hosts = 2`. Rate limits are counted on each host, and
each host enforces half of every limit: a principal's requests spread over both
never get more than the limit (tolerance: none), and requests that all reach one
host get half. Failed logins, locks and blocks are rows of the shared database:
what one host counts or sets holds on the other at once.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from tests.integration.test_audit_cluster import cluster_config
from tests.support.devserver import admin, call, dev_server
from tests.support.postgres import fresh_database

# Twelve tokens and (for the length of a test) no refill.
POLICY = """
[client_limit]
rate = 0.001
burst = 12
"""


@pytest.fixture
def cluster(postgres_dsn: str, tmp_path: Path, request: pytest.FixtureRequest):
    dsn = fresh_database(postgres_dsn, f"limits_{request.node.name[:40]}")
    pins = tmp_path / "origin-keys.json"

    def host_b(text: str) -> str:
        # One CA for both hosts, as one site has: the same client on either.
        shutil.copytree(tmp_path / "a" / "tls", tmp_path / "b" / "tls", dirs_exist_ok=True)
        return cluster_config(dsn, "b", pins)(text)

    def two_hosts(edit):
        return lambda text: edit(text).replace("[policy]\n", "[policy]\nserving_hosts = 2\n")

    with (
        dev_server(
            tmp_path / "a", policy=POLICY, edit_config=two_hosts(cluster_config(dsn, "a", pins))
        ) as a,
        dev_server(tmp_path / "b", policy=POLICY, edit_config=two_hosts(host_b)) as b,
    ):
        yield a, b


def spread(servers, count: int, **request) -> list[int]:
    """COUNT requests at once, alternately to each server, from threads; the statuses."""
    statuses: list[int] = []
    lock = threading.Lock()

    def one(server) -> None:
        status, _ = call(server, **request)
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one, args=(servers[i % 2],)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_a_rate_limit_holds_over_both_hosts_at_once(cluster) -> None:
    # Each host holds half the bucket: spread evenly, the client gets its 12, never more.
    statuses = spread(cluster, 40, method="GET", path="/v1/whoami", source="127.0.0.7")
    assert sorted(statuses) == [200] * 12 + [429] * 28
    # Another client, all its requests on one host: that host's half, not one more.
    a, _ = cluster
    statuses = [call(a, "GET", "/v1/whoami", client="core")[0] for _ in range(10)]
    assert statuses == [200] * 6 + [429] * 4


def test_failed_logins_on_either_host_lock_the_principal_on_both(cluster) -> None:
    a, b = cluster
    for attempt in range(5):  # three on one host, two on the other
        status, error = call(
            (a, b)[attempt % 2],
            "POST",
            "/v1/sessions/refresh",
            body={"refresh_token": f"guessed-{attempt}"},
        )
        assert status == 401 and error["error"]["code"] == "invalid_refresh", error
    for server in cluster:
        status, error = call(server, "GET", "/v1/whoami")
        assert status == 403 and error["error"]["code"] == "intrusion", error
    # An operator clears it once, through either host's local path: cleared on both.
    cleared = admin(a, "acl", "unblock", "--principal", "admin/admin", "--local", "--by", "alice")
    assert json.loads(cleared.stdout)["unblocked"] == "admin/admin", cleared.stdout
    for server in cluster:
        assert call(server, "GET", "/v1/whoami")[0] == 200


def test_an_address_blocked_through_one_host_is_refused_by_the_other(cluster) -> None:
    a, b = cluster
    admin(a, "acl", "block", "127.0.0.9", "--minutes", "5", "--reason", "drill")
    status, error = call(b, "GET", "/v1/whoami", source="127.0.0.9")
    assert status == 403 and error["error"]["code"] == "acl", error
