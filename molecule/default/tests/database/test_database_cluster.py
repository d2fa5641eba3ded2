"""The core tier's database after site.yml: PostgreSQL under Patroni on the core hosts,
etcd on them and on the witness, every link over mutual TLS with the site's PKI.

Read-only: each check asks the cluster and the hosts, and changes nothing.
"""

from __future__ import annotations

import json
import shlex

import pytest

from tests.support.database import (
    ADDRESS,
    CONSENSUS,
    DATA_NODES,
    PATRONI,
    PATRONICTL,
    leader,
    local_sql,
    members,
    psql_as_service,
)


def test_one_leader_one_synchronous_standby_and_a_voting_witness(hosts) -> None:
    listed = members(hosts["core-01"])
    roles = sorted(member["Role"] for member in listed)
    assert roles == ["Leader", "Sync Standby"], listed
    assert {member["State"] for member in listed} == {"running"}, listed
    assert len({member["TL"] for member in listed}) == 1, listed  # one history
    # The witness is a voting member of etcd and holds no database.
    out = hosts["mgmt-01"].check_output(
        f"ETCDCTL_API=3 etcdctl --endpoints=https://{ADDRESS['mgmt-01']}:2379"
        " --cacert=/etc/etcd/tls/ca.pem --cert=/etc/etcd/tls/peer.pem"
        " --key=/etc/etcd/tls/peer.key member list -w json"
    )
    voters = [m["name"] for m in json.loads(out)["members"] if not m.get("isLearner")]
    assert sorted(voters) == sorted(CONSENSUS)
    assert not hosts["mgmt-01"].package("patroni").is_installed
    assert not hosts["mgmt-01"].exists("postgres")


def test_commits_wait_for_the_synchronous_standby(hosts) -> None:
    primary = leader(hosts["core-01"])
    standby = next(n for n in DATA_NODES if n != primary)
    dynamic = hosts[primary].check_output(f"{PATRONICTL} show-config")
    assert "synchronous_mode: true" in dynamic and "synchronous_mode_strict: true" in dynamic
    replication = local_sql(
        hosts[primary], "SELECT application_name, sync_state FROM pg_stat_replication"
    )
    assert replication.splitlines() == [f"{standby}|sync"]
    assert psql_as_service(hosts[primary], "SHOW synchronous_commit") == ["on"]


@pytest.mark.parametrize("user", ["postgres", "replicator", "securecore"])
def test_the_database_refuses_a_client_without_a_certificate(hosts, user: str) -> None:
    address = ADDRESS[leader(hosts["core-01"])]
    refused = hosts["core-01"].run(
        f"sudo -u postgres psql 'host={address} dbname=securecore user={user} sslmode=verify-full"
        f" sslrootcert={PATRONI}/tls/ca.pem connect_timeout=5' -c 'SELECT 1'"
    )
    assert refused.rc != 0
    assert "certificate" in refused.stderr or "no pg_hba.conf entry" in refused.stderr, (
        refused.stderr
    )


def test_a_member_certificate_may_not_act_as_the_superuser(hosts) -> None:
    address = ADDRESS[leader(hosts["core-01"])]
    refused = hosts["core-02"].run(
        f"sudo -u postgres psql 'host={address} dbname=postgres user=postgres sslmode=verify-full"
        f" sslrootcert={PATRONI}/tls/ca.pem sslcert={PATRONI}/tls/client.pem"
        f" sslkey={PATRONI}/tls/client.key connect_timeout=5' -c 'SELECT 1'"
    )
    assert refused.rc != 0 and "no pg_hba.conf entry" in refused.stderr, refused.stderr


@pytest.mark.parametrize("name", DATA_NODES)
def test_each_core_host_reaches_the_primary_as_the_service_with_its_own_certificate(
    hosts, name: str
) -> None:
    # Through the address list, whichever node leads: libpq skips the replica.
    [row] = psql_as_service(
        hosts[name],
        "SELECT current_user, pg_is_in_recovery(), ssl, version FROM pg_stat_ssl"
        " WHERE pid = pg_backend_pid()",
    )
    assert row == "securecore|f|t|TLSv1.3"


def rest_health(host, certificate: bool) -> object:
    """GET /health of core-02's Patroni REST API from HOST, with or without core-01's
    client certificate (Python's ssl: the core hosts have no curl)."""
    load = (
        f"c.load_cert_chain('{PATRONI}/tls/client.pem','{PATRONI}/tls/client.key');"
        if certificate
        else ""
    )
    script = (
        "import ssl,urllib.request;"
        f"c=ssl.create_default_context(cafile='{PATRONI}/tls/ca.pem');{load}"
        f"print(urllib.request.urlopen('https://{ADDRESS['core-02']}:8008/health',"
        "context=c,timeout=5).read().decode())"
    )
    return host.run(f"python3 -c {shlex.quote(script)}")


def test_patroni_rest_api_requires_a_client_certificate(hosts) -> None:
    anonymous = rest_health(hosts["core-01"], certificate=False)
    assert anonymous.rc != 0, anonymous.stdout
    member = rest_health(hosts["core-01"], certificate=True)
    assert member.rc == 0 and json.loads(member.stdout)["state"] == "running", member.stderr


def test_hosts_outside_the_core_segment_cannot_reach_the_database(hosts) -> None:
    for port in (5432, 8008, 2379):
        probe = hosts["plugin-01"].run(f"timeout 4 bash -c '</dev/tcp/{ADDRESS['core-01']}/{port}'")
        assert probe.rc != 0, f"plugin-01 reached core-01:{port}"
