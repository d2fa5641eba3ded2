"""The core tier's database after site.yml: PostgreSQL under Patroni on the core hosts,
etcd on them and on the witness, every link over mutual TLS: the members with
certificates of the database cluster's CA, the service with its own of the site's.

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
    SERVICE_TLS,
    SERVICE_USER,
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
        f" sslrootcert={PATRONI}/tls/ca.pem sslcert={PATRONI}/tls/member.pem"
        f" sslkey={PATRONI}/tls/member.key connect_timeout=5' -c 'SELECT 1'"
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


MEMBER = (f"{PATRONI}/tls/member.pem", f"{PATRONI}/tls/member.key")
SERVICE = (f"{SERVICE_TLS}/client.pem", f"{SERVICE_TLS}/client.key")


def rest_health(host, certificate: tuple[str, str] | None, user: str = "root") -> object:
    """GET /health of core-02's Patroni REST API from HOST as USER, with CERTIFICATE
    (certificate and key files) or none (Python's ssl: the core hosts have no curl)."""
    load = f"c.load_cert_chain{certificate!r};" if certificate else ""
    script = (
        "import ssl,urllib.request;"
        f"c=ssl.create_default_context(cafile='{SERVICE_TLS}/database-ca.pem');{load}"
        f"print(urllib.request.urlopen('https://{ADDRESS['core-02']}:8008/health',"
        "context=c,timeout=5).read().decode())"
    )
    return host.run(f"cd / && sudo -u {user} python3 -c {shlex.quote(script)}")


def test_patroni_rest_api_requires_a_client_certificate(hosts) -> None:
    anonymous = rest_health(hosts["core-01"], None)
    assert anonymous.rc != 0, anonymous.stdout
    member = rest_health(hosts["core-01"], MEMBER)
    assert member.rc == 0 and json.loads(member.stdout)["state"] == "running", member.stderr


# --- The service's certificate opens none of the cluster's control paths -----------------
# Whoever runs as the core service on a database node (a compromised service) holds
# the host's site certificate and key. The cluster trusts only its own CA, and maps
# the site certificate's name to the service's role alone: with it nobody can call
# Patroni (switchover, restart), write etcd (the leader key, the dynamic
# configuration: synchronous_mode_strict off), stream WAL or rewind a node.


def test_the_service_s_certificate_cannot_call_patroni(hosts) -> None:
    refused = rest_health(hosts["core-01"], SERVICE, user=SERVICE_USER)
    assert refused.rc != 0, refused.stdout
    # Refused in the TLS handshake (TLS 1.3: the server drops the connection once it
    # has checked the client's certificate), not by the network.
    assert "ssl.SSL" in refused.stderr, refused.stderr


def etcd_keys(host, user: str, ca: str, certificate: tuple[str, str]) -> object:
    """The keys under /service/ in etcd (mgmt-01's member), asked by USER on HOST."""
    return host.run(
        f"cd / && sudo -u {user} env ETCDCTL_API=3 etcdctl"
        f" --endpoints=https://{ADDRESS['mgmt-01']}:2379 --dial-timeout=3s --command-timeout=5s"
        f" --cacert={ca} --cert={certificate[0]} --key={certificate[1]}"
        " get --prefix --keys-only /service/"
    )


def test_the_service_s_certificate_cannot_reach_etcd(hosts) -> None:
    etcd = "/etc/etcd/tls"
    member = etcd_keys(
        hosts["core-01"], "etcd", f"{etcd}/ca.pem", (f"{etcd}/peer.pem", f"{etcd}/peer.key")
    )
    assert member.rc == 0 and "/service/securecore/leader" in member.stdout, member.stderr
    refused = etcd_keys(hosts["core-01"], SERVICE_USER, f"{SERVICE_TLS}/database-ca.pem", SERVICE)
    assert refused.rc != 0 and "/service/" not in refused.stdout, refused.stdout
    # The handshake fails: the certificate is of a CA that etcd does not trust.
    assert "certificate" in refused.stderr or "deadline" in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    ("user", "options"),
    [("replicator", "replication=true dbname=postgres"), ("rewinder", "dbname=postgres")],
)
def test_the_service_s_certificate_cannot_replicate_or_rewind(
    hosts, user: str, options: str
) -> None:
    address = ADDRESS[leader(hosts["core-01"])]
    common = f"host={address} user={user} {options} sslmode=verify-full connect_timeout=5"
    refused = hosts["core-01"].run(
        f"cd / && sudo -u {SERVICE_USER} psql '{common} sslrootcert={SERVICE_TLS}/database-ca.pem"
        f" sslcert={SERVICE[0]} sslkey={SERVICE[1]}' -c 'IDENTIFY_SYSTEM'"
    )
    assert refused.rc != 0, refused.stdout
    assert f'certificate authentication failed for user "{user}"' in refused.stderr, refused.stderr
    # The member's own certificate may (the map is what refused the service's).
    member = hosts["core-01"].run(
        f"cd / && sudo -u postgres psql '{common} sslrootcert={PATRONI}/tls/ca.pem"
        f" sslcert={MEMBER[0]} sslkey={MEMBER[1]}' -XAtc "
        + ("'IDENTIFY_SYSTEM'" if user == "replicator" else "'SELECT current_user'")
    )
    assert member.rc == 0, member.stderr


@pytest.mark.parametrize("name", CONSENSUS)
def test_the_database_cluster_s_keys_are_not_the_service_s(hosts, name: str) -> None:
    host = hosts[name]
    copies = [f"{SERVICE_TLS}/database.key", "/etc/etcd/tls/peer.key"]
    if name in DATA_NODES:
        copies += [f"{PATRONI}/tls/member.key", "/etc/pgbackrest/tls/member.key"]
    for path in copies:
        assert host.file(path).exists, path
        read = host.run(f"sudo -u {SERVICE_USER} head -c1 {path}")
        assert read.rc != 0, f"{SERVICE_USER} reads {name}:{path}"
    # The member's certificate is the database CA's, named database/HOST; the site CA
    # does not vouch for it.
    pem = f"{SERVICE_TLS}/database.pem"
    subject = host.check_output(f"openssl x509 -in {pem} -noout -subject")
    assert subject.endswith(f"CN = database/{name}"), subject
    for anchor, trusted in (("database-ca.pem", True), ("ca.pem", False)):
        checked = host.run(
            f"openssl verify -CAfile {SERVICE_TLS}/{anchor} -untrusted {pem}"
            f" -purpose sslclient {pem}"
        )
        assert (checked.rc == 0) is trusted, (anchor, checked.stdout, checked.stderr)


def test_hosts_outside_the_core_segment_cannot_reach_the_database(hosts) -> None:
    for port in (5432, 8008, 2379):
        probe = hosts["plugin-01"].run(f"timeout 4 bash -c '</dev/tcp/{ADDRESS['core-01']}/{port}'")
        assert probe.rc != 0, f"plugin-01 reached core-01:{port}"
