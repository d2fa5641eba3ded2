"""The packaged core service and the reference plugin on the lab, after site.yml: running,
sandboxed, reachable only over mutual TLS, calling the plugin for an administrator,
upgraded one host at a time, and rolled back when a release is broken."""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.commands import ROOT, run
from tests.support.edge import EDGE_ADDRESS, EDGE_PORT
from tests.support.labhosts import TLS, https, lab_spec
from tests.support.service_load import install_admin_certificate

SPEC = lab_spec()
CORE = [h for h in SPEC.hosts if h.segment == "core"]
SECURECORE = "/opt/securecore/current/venv/bin/securecore"
AS_SERVICE = "runuser -u securecore -- env SOFTHSM2_CONF=/etc/securecore/softhsm2.conf"
CONFIG = "/etc/securecore/securecore.toml"


def readyz(host, address: str, client: str | None = f"{TLS}/client") -> tuple[int, object]:
    return https(host, address, "GET", "/readyz", client=client)


def test_bodies_over_the_limit_are_refused_before_they_are_read(hosts) -> None:
    # [limits] rendered from the role's defaults: 4096 bytes for a refresh.
    dmz, address = hosts["dmz-01"], str(CORE[0].address)
    status, answer = https(
        dmz, address, "POST", "/v1/sessions/refresh", body={"refresh_token": "r" * 5000}
    )
    assert status == 413 and answer["error"]["code"] == "payload_too_large", answer
    config = hosts[CORE[0].name].file(CONFIG).content_string
    assert '"/v1/plugins/{name}/call" = 65536' in config


def current_release(host) -> str:
    return Path(host.check_output("readlink /opt/securecore/current")).name


def audit_records(host) -> int:
    out = host.check_output(f"{AS_SERVICE} {SECURECORE} audit verify -c {CONFIG}")
    assert "audit log OK" in out, out
    return int(re.search(r"(\d+) records", out)[1])


@pytest.mark.parametrize("name", [h.name for h in CORE])
def test_the_service_runs_sandboxed_as_its_own_user(hosts, name) -> None:
    host = hosts[name]
    service = host.service("securecore")
    assert service.is_running and service.is_enabled
    pid = host.check_output("systemctl show -p MainPID --value securecore")
    assert host.check_output(f"stat -c %U /proc/{pid}") == "securecore"
    exposure = host.check_output("systemd-analyze security securecore.service --no-pager")
    level = float(re.search(r"Overall exposure level for [\w.]+: ([\d.]+)", exposure)[1])
    assert level <= 2.0, exposure


@pytest.mark.parametrize("name", [h.name for h in CORE])
def test_the_service_runs_a_worker_per_cpu_it_may_use(hosts, name) -> None:
    # The role's default (securecore_workers: auto): a worker is one Python process.
    host = hosts[name]
    assert 'workers = "auto"' in host.file(CONFIG).content_string
    pid = host.check_output("systemctl show -p MainPID --value securecore")
    cpus = int(
        host.check_output(f"python3 -c 'import os; print(len(os.sched_getaffinity({pid})))'")
    )
    children = host.check_output(
        f"for child in $(cat /proc/{pid}/task/*/children); do "
        f"tr '\\0' ' ' < /proc/$child/cmdline; echo; done"
    )
    workers = [line for line in children.splitlines() if "spawn_main" in line]
    assert len(workers) == cpus, children


@pytest.mark.parametrize("name", [h.name for h in CORE])
def test_configuration_and_secrets_are_readable_by_the_service_only(hosts, name) -> None:
    host = hosts[name]
    config = host.file(CONFIG)
    assert (config.user, config.group, config.mode) == ("root", "securecore", 0o640)
    for path in ("/etc/securecore/secrets/hsm_user_pin", "/etc/securecore/secrets/audit_hmac_key"):
        found = host.file(path)
        assert (found.user, found.mode) == ("securecore", 0o600), path
    pin = (SPEC.state_dir / "secrets" / "hsm_user_pin").read_text().strip()
    assert pin not in host.file(CONFIG).content_string
    assert pin not in host.check_output("journalctl -u securecore --no-pager -o cat")


@pytest.mark.parametrize("name", [h.name for h in CORE])
def test_installed_offline_from_the_wheelhouse(hosts, name) -> None:
    host = hosts[name]
    assert host.file("/opt/securecore/current").is_symlink
    version = host.check_output(f"{SECURECORE} --version").split()[-1]
    assert current_release(host).startswith(f"{version}-")
    assert host.file("/opt/securecore/wheelhouse").is_directory


def test_only_mutual_tls_clients_of_the_site_reach_it(hosts) -> None:
    dmz, address = hosts["dmz-01"], str(CORE[0].address)
    # On the shared database: the state database is writable through the cluster.
    checks = ["audit_writer", "signing_key", "state_database"]
    assert readyz(dmz, address) == (200, {"status": "ready", "checks": checks})
    # No client certificate: TLS 1.3 ends the connection ("certificate required")
    # before any HTTP answer.
    status, refused = readyz(dmz, address, client=None)
    assert status == 0 and refused["exception"], refused
    status, who = https(dmz, address, "GET", "/v1/whoami")
    assert status == 200 and who["spiffe_id"] == "spiffe://securecore/dmz/dmz-01", who


@pytest.mark.parametrize("name", [h.name for h in CORE])
def test_the_audit_log_on_the_host_verifies_with_the_hsm_key(hosts, name) -> None:
    host, address = hosts[name], str(next(h.address for h in CORE if h.name == name))
    before = audit_records(host)
    assert https(host, address, "GET", "/v1/whoami")[0] == 200  # a policy decision: a record
    # At least: the other core host writes to the same log meanwhile.
    assert audit_records(host) >= before + 1


# --- the core calls the plugin ------------------------------------------------------------


@pytest.fixture(scope="module")
def admin_client(hosts):
    """Requests from dmz-01 with the lab administrator's certificate (copied for the test
    only): through the DMZ edge on its public port, as every client of the site comes -
    so every API check here also shows the edge lets the service's own traffic through
    (no false positive of its WAF, its token check or its limits) - or straight to the
    core host VIA."""
    dmz = hosts["dmz-01"]
    install_admin_certificate(dmz)

    def request(
        method: str, path: str, token: str | None = None, body: dict | None = None, via=None
    ):
        return https(
            dmz,
            EDGE_ADDRESS if via is None else str(via.address),
            method,
            path,
            client="/tmp/lab-admin/client",
            token=token,
            body=body,
            port=EDGE_PORT if via is None else 8443,
        )

    yield request
    dmz.run("rm -rf /tmp/lab-admin")


def plugin_record(admin_client) -> dict:
    status, plugins = admin_client("GET", "/v1/admin/plugins")
    assert status == 200, plugins
    return next(p for p in plugins if p["name"] == "plugin-01")


def test_the_plugin_is_registered_and_answers_through_the_core(admin_client) -> None:
    plugin = plugin_record(admin_client)
    assert plugin["state"] == "active" and plugin["vendor"] == "securecore"
    status, session = admin_client("POST", "/v1/sessions")
    assert status == 201, session
    token = session["access_token"]
    ticket = {"op": "tickets.create", "args": {"title": "lab drill"}}
    status, created = admin_client("POST", "/v1/plugins/plugin-01/call", token, ticket)
    assert status == 200, created
    assert created["result"]["created_by"] == "admin/lab-admin"
    listing = {"op": "tickets.list", "args": {}}
    status, listed = admin_client("POST", "/v1/plugins/plugin-01/call", token, listing)
    assert status == 200 and any(t["title"] == "lab drill" for t in listed["result"])


def test_plugin_calls_are_authorised_per_principal_and_operation(hosts) -> None:
    """The lab's policy (roles/securecore defaults): the DMZ host may create, read and list
    tickets, not change them; a refusal is 403 and an audit record on the core."""
    dmz, address = hosts["dmz-01"], str(CORE[0].address)
    status, session = https(dmz, address, "POST", "/v1/sessions")
    assert status == 201, session
    token = session["access_token"]
    listing = {"op": "tickets.list", "args": {}}
    assert (
        https(dmz, address, "POST", "/v1/plugins/plugin-01/call", token=token, body=listing)[0]
        == 200
    )
    closing = {"op": "tickets.update", "args": {"id": 1, "status": "closed"}}
    status, refused = https(
        dmz, address, "POST", "/v1/plugins/plugin-01/call", token=token, body=closing
    )
    assert status == 403 and refused["error"]["code"] == "forbidden", refused
    exported = hosts[CORE[0].name].check_output(
        f"{AS_SERVICE} {SECURECORE} audit export -c {CONFIG}"
    )
    denied = [line for line in exported.splitlines() if '"action":"plugin.authorize"' in line]
    assert any('"actor":"dmz/dmz-01"' in line and "tickets.update" in line for line in denied)


def test_plugins_are_isolated_by_endpoint_and_core_identity(hosts) -> None:
    """A registration naming an endpoint outside the plugin segment is refused before any
    connection; the plugin serves only the core hosts' principals."""
    plugin = hosts["plugin-01"]
    unit = plugin.check_output("systemctl show -p ExecStart --value securecore-plugin")
    for core in CORE:
        assert f"--core-principal core/{core.name}" in unit
    core_url = f"https://{CORE[0].address}:8443"
    refused = plugin.run(
        f"runuser -u securecore -- {SECURECORE} plugin register --core {core_url} "
        f"--tls-policy {TLS}/policy.json --name plugin-01 --vendor securecore "
        f"--endpoint {core_url} --security-level 4"
    )  # the core's own service port, in the core segment
    assert refused.rc != 0 and "endpoint not allowed" in refused.stdout + refused.stderr


def test_a_stopped_plugin_loses_success_rate_and_trust(hosts, admin_client) -> None:
    token = admin_client("POST", "/v1/sessions")[1]["access_token"]
    before = plugin_record(admin_client)
    plugin_host = hosts["plugin-01"]
    plugin_host.check_output("systemctl stop securecore-plugin")
    answers = []
    try:
        # Calls until the score moves (a plugin with a long good record loses
        # less per failure), at most ten.
        listing = {"op": "tickets.list", "args": {}}
        for _ in range(10):
            answers.append(admin_client("POST", "/v1/plugins/plugin-01/call", token, listing))
            if plugin_record(admin_client)["score"] < before["score"]:
                break
    finally:
        plugin_host.check_output("systemctl start securecore-plugin")
    assert all(s == 502 and a["error"]["code"] == "unreachable" for s, a in answers), answers
    after = plugin_record(admin_client)
    assert after["calls"] == before["calls"] + len(answers)
    assert after["successes"] == before["successes"]
    assert after["successes"] / after["calls"] < before["successes"] / before["calls"]
    assert after["score"] < before["score"]


# --- operations playbooks -----------------------------------------------------------------


def test_emergency_shutdown_and_recovery_by_playbook(hosts, admin_client) -> None:
    missing = run("ansible-playbook", "playbooks/emergency-shutdown.yml", check=False)
    assert missing.returncode != 0 and "give the reason" in missing.stdout
    run("ansible-playbook", "playbooks/emergency-shutdown.yml", "-e", '{"reason": "lab drill"}')
    status, refused = admin_client("POST", "/v1/sessions")
    assert status == 503 and refused["error"]["code"] == "emergency", refused
    # Every core host serves, so every one is shut down and keeps its snapshot.
    for h in CORE:
        assert admin_client("POST", "/v1/sessions", via=h)[0] == 503, h.name
        snapshot = json.loads(
            hosts[h.name].file("/var/lib/securecore/data/emergency/snapshot.json").content_string
        )
        assert snapshot["reason"].startswith("lab drill") and snapshot["latest_checkpoint"]
        assert snapshot["actor"].startswith("operator:")
    run("ansible-playbook", "playbooks/recover.yml", "-e", '{"note": "drill over"}')
    for h in CORE:
        status, pair = admin_client("POST", "/v1/sessions", via=h)
        assert status == 201, h.name
        # Sessions are the cluster's: a principal's live ones count on every host.
        assert admin_client("DELETE", "/v1/sessions/current", pair["access_token"], via=h)[0] == 204


def test_a_privilege_escalation_locks_only_its_principal_and_the_local_path_clears_it(
    hosts, admin_client
) -> None:
    # dmz-01's own principal tries the admin API from the address the
    # administrator's requests come from too (admin_client runs on dmz-01).
    dmz, core, address = hosts["dmz-01"], hosts["core-01"], str(CORE[0].address)
    try:
        assert https(dmz, address, "GET", "/v1/admin/acl")[0] == 403
        status, refused = https(dmz, address, "POST", "/v1/sessions")
        assert status == 403 and refused["error"]["code"] == "intrusion", refused
        status, blocks = admin_client("GET", "/v1/admin/acl")  # the administrator works on
        assert status == 200 and not [b for b in blocks if b["kind"] == "ip"], blocks
        assert {(b["kind"], b["until"]) for b in blocks if b["subject"] == "dmz/dmz-01"} == {
            ("principal", None)
        }
        # The local admin socket, through the unit's sandbox (PrivateUsers): root
        # lists, the service user clears.
        listed = json.loads(core.check_output(f"{SECURECORE} acl list --local -c {CONFIG}"))
        assert "dmz/dmz-01" in [b["subject"] for b in listed]
    finally:
        core.check_output(
            f"{AS_SERVICE} {SECURECORE} acl unblock --principal dmz/dmz-01 "
            f"--local --by lab -c {CONFIG}"
        )
    assert https(dmz, address, "POST", "/v1/sessions")[0] == 201
    assert not [b for b in admin_client("GET", "/v1/admin/acl")[1] if b["subject"] == "dmz/dmz-01"]


# Requests every 0.2 s from dmz-01 while a playbook runs: readiness, and a call through the
# core to the plugin with a session made before; each answer's status and the fingerprint of
# the certificate the core presented. Bounded by SECONDS and ended early by the STOP file.
TRAFFIC = """
import hashlib, http.client, json, os, ssl, sys, time
a = json.loads(sys.argv[1])
ctx = ssl.create_default_context(cafile=a["ca"])
ctx.load_cert_chain(a["cert"], a["key"])
seen = {"requests": 0, "failures": [], "certificates": []}
call = json.dumps({"op": "tickets.list", "args": {}})
deadline = time.monotonic() + a["seconds"]
while time.monotonic() < deadline and not os.path.exists(a["stop"]):
    for method, path, body in (("GET", "/readyz", None),
                               ("POST", "/v1/plugins/plugin-01/call", call)):
        try:
            c = http.client.HTTPSConnection(a["host"], a["port"], context=ctx, timeout=10)
            c.request(method, path, body=body, headers={
                "Authorization": "Bearer " + a["token"], "Content-Type": "application/json"})
            # Before the answer: one that says "Connection: close" (the edge's old
            # process after a reload) leaves the client without its socket.
            served = hashlib.sha256(c.sock.getpeercert(binary_form=True)).hexdigest()
            r = c.getresponse()
            answer = r.read().decode()
            if served not in seen["certificates"]:
                seen["certificates"].append(served)
            if r.status == 401 and '"expired"' in answer:
                # Access tokens live 5 minutes and a rotation on a busy machine takes
                # longer: a client signs in again, as any client does; not a failure.
                c.close()
                c = http.client.HTTPSConnection(a["host"], a["port"], context=ctx, timeout=10)
                c.request("POST", "/v1/sessions", body="{}",
                          headers={"Content-Type": "application/json"})
                renewed = c.getresponse()
                a["token"] = json.loads(renewed.read())["access_token"]
                seen["renewals"] = seen.get("renewals", 0) + 1
            elif r.status != 200:
                seen["failures"].append(f"{path}: {r.status} {answer[:200]}")
            c.close()
        except Exception as e:
            seen["failures"].append(f"{path}: {type(e).__name__}: {e}")
        seen["requests"] += 1
    time.sleep(0.2)
with open(a["out"] + ".tmp", "w") as f:
    json.dump(seen, f)
os.rename(a["out"] + ".tmp", a["out"])
"""


def token_kid(token: str) -> str:
    header = token.split(".", 1)[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]


def test_keys_and_certificates_rotate_without_downtime(hosts, admin_client) -> None:
    dmz = hosts["dmz-01"]
    status, session = admin_client("POST", "/v1/sessions")
    assert status == 201, session
    token = session["access_token"]
    before = plugin_record(admin_client)
    out, stop = "/tmp/rotation-traffic.json", "/tmp/rotation-traffic.stop"
    dmz.run(f"rm -f {out} {stop}")
    # Through the edge: its certificates and the token keys it checks rotate too.
    traffic = {
        "host": EDGE_ADDRESS,
        "port": EDGE_PORT,
        "ca": f"{TLS}/ca.pem",
        "token": token,
        "cert": "/tmp/lab-admin/client.pem",
        "key": "/tmp/lab-admin/client.key",
        "seconds": 900,
        "stop": stop,
        "out": out,
    }
    dmz.check_output(
        f"setsid -f python3 -c {shlex.quote(TRAFFIC)} "
        f"{shlex.quote(json.dumps(traffic))} </dev/null >/dev/null 2>&1"
    )
    try:
        rotated = run("ansible-playbook", "playbooks/rotate-keys.yml", check=False, timeout=900)
    finally:
        dmz.run(f"touch {stop}")
        for _ in range(60):
            if dmz.file(out).exists:
                break
            time.sleep(0.5)
    # The failed tasks' own lines first: the run's end is only its recap and timings.
    failures = [line for line in rotated.stdout.splitlines() if line.startswith("fatal: ")]
    assert rotated.returncode == 0, "\n".join([*failures, rotated.stdout[-3000:]])
    seen = json.loads(dmz.file(out).content_string)
    assert seen["requests"] >= 20 and seen["failures"] == [], seen
    assert len(seen["certificates"]) == 2, seen  # the old certificate, then the new one
    # HSM: new sessions are signed with the new key version, the earlier one still verifies.
    status, fresh = admin_client("POST", "/v1/sessions")
    assert status == 201 and token_kid(fresh["access_token"]) != token_kid(token), fresh
    assert admin_client("GET", "/v1/sessions/current", token)[0] == 200
    # The plugin registered again (new channel) and lost nothing meanwhile.
    after = plugin_record(admin_client)
    assert after["state"] == "active"
    assert after["calls"] - before["calls"] == after["successes"] - before["successes"] > 0
    assert "plugin.register.completion" in hosts["core-01"].check_output(
        f"{AS_SERVICE} {SECURECORE} audit export -c {CONFIG} | tail -n 200"
    )
    for h in CORE:
        assert audit_records(hosts[h.name]) > 0
        assert readyz(hosts[h.name], str(h.address))[0] == 200
    # The daemons that read copies of the host's certificates serve the new ones:
    # node_exporter (as Prometheus sees it, from mgmt-01) and the journal's uploader.
    core, address = hosts["core-01"], next(h.address for h in CORE if h.name == "core-01")
    issued = core.check_output(f"openssl x509 -in {TLS}/server.pem -noout -fingerprint")
    served = hosts["mgmt-01"].check_output(
        f"openssl s_client -connect {address}:9100 </dev/null 2>/dev/null"
        " | openssl x509 -noout -fingerprint"
    )
    assert served == issued, (served, issued)
    assert core.run(f"cmp {TLS}/client.pem /etc/systemd/journal-upload-tls/client.pem").rc == 0
    # The administrator may hold 5 live sessions: later checks sign in too.
    for signed_in in (token, fresh["access_token"]):
        assert admin_client("DELETE", "/v1/sessions/current", signed_in)[0] == 204


def test_backup_by_playbook_backs_up_the_shared_database(hosts) -> None:
    made = run("ansible-playbook", "playbooks/backup.yml", timeout=900)
    assert re.search(r"securecore: ok; newest backup \S+F \(full, finished", made.stdout), (
        made.stdout[-3000:]
    )
    # The core hosts' state is the database's: no backup of their own, no timer for one.
    for h in CORE:
        assert not hosts[h.name].file("/etc/systemd/system/securecore-backup.timer").exists
    refused = run(
        "ansible-playbook",
        "playbooks/restore.yml",
        "-e",
        '{"restore_host": "core-01"}',
        check=False,
    )
    assert refused.returncode != 0
    assert "restore that database from its pgBackRest repository" in refused.stdout


# --- one service on two hosts ----------------------------------------------------------------


def exported(host) -> list[dict]:
    """The audit log's records, as `securecore audit export` on HOST gives them."""
    out = host.check_output(f"{AS_SERVICE} {SECURECORE} audit export -c {CONFIG}")
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [line["record"] for line in lines if line.get("type") == "record"]


def test_a_session_made_on_one_host_is_honoured_and_ended_on_the_other(admin_client) -> None:
    first, second = CORE
    status, pair = admin_client("POST", "/v1/sessions", via=first)
    assert status == 201, pair
    token = pair["access_token"]
    assert admin_client("GET", "/v1/sessions/current", token, via=second)[0] == 200
    # Refreshed on the second host; the pair it gives works on the first.
    status, refreshed = admin_client(
        "POST", "/v1/sessions/refresh", body={"refresh_token": pair["refresh_token"]}, via=second
    )
    assert status == 200, refreshed
    token = refreshed["access_token"]
    assert admin_client("GET", "/v1/sessions/current", token, via=first)[0] == 200
    # Reusing the spent refresh token on the first host ends the session everywhere.
    reused = admin_client(
        "POST", "/v1/sessions/refresh", body={"refresh_token": pair["refresh_token"]}, via=first
    )
    assert reused[0] == 401, reused
    for h in CORE:
        assert admin_client("GET", "/v1/sessions/current", token, via=h)[0] == 401, h.name


def test_the_plugin_answers_through_every_core_host(hosts, admin_client) -> None:
    # Registered with core-01; core-02 sets up a channel of its own on its first call.
    for h in CORE:
        token = admin_client("POST", "/v1/sessions", via=h)[1]["access_token"]
        body = {"op": "tickets.list", "args": {}}
        status, answer = admin_client("POST", "/v1/plugins/plugin-01/call", token, body, via=h)
        assert status == 200, (h.name, answer)
        assert admin_client("DELETE", "/v1/sessions/current", token, via=h)[0] == 204
    holders = [
        record["details"]["holder"]
        for record in exported(hosts["core-01"])
        if record["action"] == "plugin.channel" and record["outcome"] == "success"
    ]
    assert "securecore-signing-core-02" in holders


def test_both_hosts_write_one_audit_log_that_verifies_on_each(hosts, admin_client) -> None:
    for h in CORE:
        assert admin_client("GET", "/v1/whoami", via=h)[0] == 200
    logs = {h.name: exported(hosts[h.name]) for h in CORE}
    size = min(len(records) for records in logs.values())
    assert size > 0
    # Record for record the same log, whichever host reads it.
    first, second = (logs[h.name][:size] for h in CORE)
    assert first == second
    for h in CORE:
        assert audit_records(hosts[h.name]) >= size
    # Checkpoints of the shared origin, signed by each host's own key over time (the
    # sequencer moves with the lock; every host's key is pinned).
    pins = json.loads(hosts["core-01"].file("/etc/securecore/origin-keys.json").content_string)
    for h in CORE:  # every version on its token (the rotation above made a second)
        exported_keys = hosts[h.name].check_output("ls /etc/securecore/keys").split()
        names = sorted(name.removesuffix(".pem") for name in exported_keys)
        assert names and all(n.startswith(f"securecore-signing-{h.name}-v") for n in names)
        assert set(names) <= set(pins["core/securecore/audit"])
    assert set(pins) == {"core/securecore/audit"}
    # Checkpoints in the log signed by both hosts' keys (the sequencer lock moves).
    signers = hosts["core-01"].check_output(
        f"{AS_SERVICE} {SECURECORE} audit export -c {CONFIG}"
        " | grep -o 'core/securecore/audit/securecore-signing-core-0[12]' | sort -u; true"
    )
    print(f"\ncheckpoint signers: {signers.split()}")


def newest_checkpoint_signer(host) -> tuple[int, str]:
    """The newest signed checkpoint's size and the host whose key signed it."""
    out = host.check_output(f"{AS_SERVICE} {SECURECORE} audit export -c {CONFIG}")
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    checkpoint = [line for line in lines if line.get("type") == "checkpoint"][-1]
    signer = re.search(r"securecore-signing-(core-\d+)-v\d+ ", checkpoint["note"])
    assert signer, checkpoint["note"]
    return checkpoint["size"], signer[1]


def test_the_sequencer_moves_when_its_host_stops_and_no_record_goes_unsigned(
    hosts, admin_client
) -> None:
    """One host at a time signs checkpoints (a lock in the shared database, REQ-HA-10):
    stopping it, the other takes over within a checkpoint interval or two and signs
    the records written meanwhile with its own key."""
    assert admin_client("GET", "/v1/whoami")[0] == 200
    deadline = time.monotonic() + 30
    while (found := newest_checkpoint_signer(hosts["core-01"]))[0] < audit_records(
        hosts["core-01"]
    ):
        assert time.monotonic() < deadline, f"no checkpoint covers the log after 30 s: {found}"
        time.sleep(1)
    signer = found[1]
    other = next(h for h in CORE if h.name != signer)
    hosts[signer].check_output("systemctl stop securecore")
    try:
        stopped = time.monotonic()
        status, _ = admin_client("GET", "/v1/whoami", via=other)
        assert status == 200
        written = audit_records(hosts[other.name])
        while (found := newest_checkpoint_signer(hosts[other.name]))[1] != other.name or (
            found[0] < written
        ):
            assert time.monotonic() - stopped < 60, f"{other.name} signs nothing: {found}"
            time.sleep(1)
        print(
            f"\nsequencer: {other.name} signed {found[0]} records "
            f"{time.monotonic() - stopped:.1f} s after {signer} stopped"
        )
    finally:
        hosts[signer].check_output("systemctl start securecore")
        address = next(h.address for h in CORE if h.name == signer)
        for _ in range(60):
            if readyz(hosts[signer], str(address))[0] == 200:
                break
            time.sleep(1)
    assert readyz(hosts[signer], str(address))[0] == 200


# --- releases -------------------------------------------------------------------------------


def build_release(tmp_path: Path, version: str, broken: bool = False) -> Path:
    """A wheelhouse with securecore VERSION (and, if BROKEN, a service that cannot start)."""
    source = tmp_path / f"src-{version}"
    for package in ("securecore", "compliance"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pyproject = source / "pyproject.toml"
    pyproject.write_text(
        re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text())
    )
    if broken:
        serve = source / "securecore" / "server" / "serve.py"
        serve.write_text(
            serve.read_text().replace(
                "    policy, host, port = tls_and_address(config)\n",
                '    raise RuntimeError("a deliberately broken release")\n',
                1,
            )
        )
    wheelhouse = tmp_path / f"wheels-{version}"
    shutil.copytree(ROOT / "output" / "wheelhouse" / "securecore", wheelhouse)
    for old in wheelhouse.glob("securecore-*.whl"):
        old.unlink()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(wheelhouse),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return wheelhouse


def deploy(wheelhouse: Path, version: str, *extra: str, check: bool = True):
    return run(
        "ansible-playbook",
        "playbooks/core.yml",
        "-e",
        f"securecore_artifacts_dir={wheelhouse}",
        "-e",
        f"securecore_version={version}",
        *extra,
        check=check,
        timeout=900,
    )


def test_a_broken_release_is_rolled_back_on_the_first_host_and_goes_no_further(
    hosts, tmp_path
) -> None:
    before = {h.name: current_release(hosts[h.name]) for h in CORE}
    # A release that cannot start never becomes ready: 5 checks (10 s) show it as well
    # as the role's 30 (a minute), which are for a slow start on a real host.
    proc = deploy(
        build_release(tmp_path, "0.0.1.post1", broken=True),
        "0.0.1.post1",
        "-e",
        '{"securecore_health_retries": 5}',
        check=False,
    )
    assert proc.returncode != 0
    assert "failed its health check on core-01" in proc.stdout, proc.stdout
    assert f"rolled back to {before['core-01']}" in proc.stdout
    assert {h.name: current_release(hosts[h.name]) for h in CORE} == before
    assert readyz(hosts["core-01"], str(CORE[0].address))[0] == 200
    assert "core-02" not in proc.stdout.split("PLAY RECAP", 1)[1]  # never touched


def test_an_upgrade_rolls_through_both_hosts_and_keeps_the_data(hosts, tmp_path) -> None:
    records = {h.name: audit_records(hosts[h.name]) for h in CORE}
    deploy(build_release(tmp_path, "9.9.9"), "9.9.9")
    for h in CORE:
        host = hosts[h.name]
        assert current_release(host).startswith("9.9.9-")
        assert host.check_output(f"{SECURECORE} --version").endswith("9.9.9")
        assert audit_records(host) >= records[h.name]
        assert readyz(host, str(h.address))[0] == 200
