"""Containing plugin-01 during an incident, on the lab (REQ-IR-1 to REQ-IR-3).

Traffic flows while plugin-01 is contained: plugin-01 calls the core API over one
kept-alive connection, core-01 connects to the plugin's port, clients reach the
core through the edge. Once contained, plugin-01 reaches and is reached by
nothing but SSH from the management networks and its journal to the collector,
proved by real connections from the lab's hosts; the connection it had open is
cut; the core keeps serving through the edge. The backup taken once it is
contained is on the controller and verifies. Its certificates are revoked: a copy of
its key presented from another host is refused by the core hosts. Release leaves the
ruleset exactly as it was and gives plugin-01 new keys and certificates. Bad requests
are refused before anything changes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.support.central_logs import find_markers
from tests.support.commands import ROOT, run
from tests.support.edge import request
from tests.support.labhosts import TLS, can_connect, https, lab_spec

SPEC = lab_spec()
HOSTS = {h.name: h for h in SPEC.hosts}
CONTAINED, CORE, MGMT = "plugin-01", "core-01", "mgmt-01"
CORE_PORT, PLUGIN_PORT, PROXY_PORT, SSH_PORT = 8443, 9443, 3142, 22
SECURECORE = "/opt/securecore/current/venv/bin/securecore"
CONFIG = "/etc/securecore/securecore.toml"
TABLE = "securecore_quarantine"
FLOW_SECONDS = 240
STOLEN = "/tmp/incident-stolen/client"  # a copy of plugin-01's client key, on dmz-01
REVOCATION_BOUND = 60  # seconds: the most the TLS policy's watch_seconds may be

# Runs on a lab host for FLOW_SECONDS: a request (or a connection) every 0.3 s, each
# outcome a line "TIME ok|fail WHY" in argv[1]. With a URL the requests share one
# kept-alive TLS connection, made again only after a failure.
FLOW = r"""
import http.client, socket, ssl, sys, time
log, target = open(sys.argv[1], "a", buffering=1), sys.argv[2]
host, port = target.rsplit(":", 1)
end, connection = time.time() + float(sys.argv[3]), None
while time.time() < end:
    try:
        if len(sys.argv) > 4:
            if connection is None:
                ctx = ssl.create_default_context(cafile=sys.argv[4] + "/ca.pem")
                ctx.load_cert_chain(sys.argv[4] + "/client.pem", sys.argv[4] + "/client.key")
                connection = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=1)
            connection.request("GET", "/healthz")
            connection.getresponse().read()
        else:
            socket.create_connection((host, int(port)), timeout=1).close()
        log.write(f"{time.time()} ok -\n")
    except Exception as error:
        log.write(f"{time.time()} fail {type(error).__name__}\n")
        if connection is not None:
            connection.close()
        connection = None
    time.sleep(0.3)
"""


def ip(name: str) -> str:
    return str(HOSTS[name].address)


def playbook(name: str, extra: dict, *options: str) -> subprocess.CompletedProcess[str]:
    return run(
        "ansible-playbook",
        f"playbooks/incident/{name}.yml",
        "-e",
        json.dumps(extra),
        *options,
        check=False,
        timeout=600,
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP's counts per host."""
    found = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.MULTILINE):
        found[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return found


def incident(hosts, *args: str) -> dict:
    """`securecore incident` on core-01's local admin socket, as an operator there."""
    command = [SECURECORE, "incident", *args, "--local", "--by", "lab-drill", "-c", CONFIG]
    return json.loads(hosts[CORE].check_output(shlex.join(command)))


def ruleset(host) -> str:
    return host.check_output("nft --stateless list ruleset")


def held(host) -> dict[str, str]:
    """The serials (hex) of the certificates HOST holds with their keys."""
    found = {}
    for name in ("server", "client"):
        out = host.check_output(f"openssl x509 -noout -serial -in {TLS}/{name}.pem")
        found[name] = out.split("=", 1)[1].strip().lower().lstrip("0")
    return found


def refused_by_the_core(dmz, client: str) -> None:
    """Both core hosts refuse CLIENT's certificate in the handshake (no HTTP answer) within
    the bound, while they answer dmz-01's own over the same path: the refusal is the
    certificate's, not the network's. (The core closes the connection without a TLS alert
    that would name the reason.)"""
    for name in ("core-01", "core-02"):
        deadline = time.monotonic() + REVOCATION_BOUND
        while https(dmz, ip(name), "GET", "/v1/whoami", client=client)[0] != 0:
            assert time.monotonic() < deadline, f"{name} still accepts {client}"
            time.sleep(2)
        assert https(dmz, ip(name), "GET", "/v1/whoami")[0] != 0, f"{name} answers nobody"


def start_flow(host, log: str, target: str, tls: bool = False) -> None:
    arguments = [log, target, str(FLOW_SECONDS)] + ([TLS] if tls else [])
    unit = f"securecore-test-flow-{uuid.uuid4().hex[:8]}"
    host.check_output(
        f"rm -f {log} && systemd-run --unit {unit} --collect "
        f"python3 -c {shlex.quote(FLOW)} {shlex.join(arguments)}"
    )


def flow(host, log: str) -> list[tuple[float, bool, str]]:
    lines = host.check_output(f"cat {log}").splitlines()
    return [(float(t), status == "ok", why) for t, status, why in (ln.split() for ln in lines)]


@pytest.fixture(scope="module")
def rules_before(hosts):
    """plugin-01's ruleset before anything of this module ran; whatever the tests leave,
    plugin-01 is out of quarantine after them (the checks that follow need it)."""
    yield ruleset(hosts[CONTAINED])
    hosts[CONTAINED].run(
        f"nft delete table inet {TABLE}; rm -f /etc/nftables.d/{TABLE}.nft {TLS}/planted.*; "
        "systemctl stop 'securecore-test-flow-*'"
    )
    hosts[CORE].run("systemctl stop 'securecore-test-flow-*'")
    hosts["dmz-01"].run(f"rm -rf {STOLEN.rsplit('/', 1)[0]}")


@pytest.fixture(scope="module")
def opened(hosts, rules_before) -> Iterator[str]:
    record = incident(
        hosts,
        "open",
        "--title",
        "plugin-01 beacons to an unknown address",
        "--severity",
        "high",
        "--impact",
        "compromise",
        "--source",
        "monitoring",
    )
    assert record["escalation_level"] == 2 and record["phase"] == "detection"
    yield record["id"]
    # Whatever the tests left, plugin-01 ends released, on certificates the CA has not
    # revoked: the checks that follow use the plugin.
    revoked = ROOT / "inventories/lab/.state/pki-ca/revoked.json"
    if revoked.exists() and set(held(hosts[CONTAINED]).values()) & {
        r["serial"] for r in json.loads(revoked.read_text())
    }:
        playbook("release", {"incident": record["id"], "hosts": [CONTAINED]})


def test_bad_requests_are_refused_before_anything_changes(hosts, opened, rules_before) -> None:
    bad = playbook("contain", {"incident": "INC-26-7", "hosts": ["mgmt-01", "ghost", CONTAINED]})
    assert bad.returncode != 0
    for said in (
        "incident: 'INC-26-7' is not an incident id (INC-YYYY-NNNN)",
        "hosts: mgmt-01 is in group management",
        "hosts: 'ghost' is not a host of the inventory",
        "reason: give why",
    ):
        assert said in bad.stdout, bad.stdout[-3000:]
    unopened = playbook(
        "contain", {"incident": "INC-2026-9999", "hosts": [CONTAINED], "reason": "x"}
    )
    assert unopened.returncode != 0
    assert "INC-2026-9999 is not an open incident of the core" in unopened.stdout
    assert "no incident INC-2026-9999" in unopened.stdout
    assert ruleset(hosts[CONTAINED]) == rules_before
    assert not hosts[CONTAINED].file(f"/etc/nftables.d/{TABLE}.nft").exists


def test_a_contained_host_reaches_and_is_reached_by_nothing_but_ssh_and_its_logs(
    hosts, opened, rules_before
) -> None:
    plugin, core, mgmt, dmz = hosts[CONTAINED], hosts[CORE], hosts[MGMT], hosts["dmz-01"]
    zone_before = plugin.check_output("nft --stateless list table inet securecore")
    # The attacker's copy of plugin-01's client key, used from another host: the core
    # takes it in the handshake (and answers) until it is revoked.
    for ext in ("pem", "key"):
        copied = plugin.check_output(f"cat {TLS}/client.{ext}")
        dmz.check_output(
            f"install -d -m 0700 {STOLEN.rsplit('/', 1)[0]} && "
            f"printf '%s\\n' {shlex.quote(copied)} > {STOLEN}.{ext}"
        )
    assert https(dmz, ip(CORE), "GET", "/v1/whoami", client=STOLEN)[0] != 0
    serials = held(plugin)
    # What plugin-01 would say it holds decides nothing: core-01's certificate planted in
    # its TLS directory beside a key is not revoked.
    planted = core.check_output(f"cat {TLS}/server.pem")
    plugin.check_output(
        f"printf '%s\\n' {shlex.quote(planted)} > {TLS}/planted.pem && "
        f"cp {TLS}/client.key {TLS}/planted.key"
    )
    core_serial = held(core)["server"]
    # A session of the plugin's principal, which containing it with revoke_sessions ends.
    status, session = https(plugin, ip(CORE), "POST", "/v1/sessions")
    assert status == 201, session
    # Traffic flows: plugin-01 to the core API on one kept-alive connection, core-01 to
    # the plugin's port.
    start_flow(plugin, "/tmp/incident-flow-out", f"{ip(CORE)}:{CORE_PORT}", tls=True)
    start_flow(core, "/tmp/incident-flow-in", f"{ip(CONTAINED)}:{PLUGIN_PORT}")
    time.sleep(2)
    contained_at = time.time()
    reason = "beaconing to 203.0.113.9 seen by the IDS"
    extra = {
        "incident": opened,
        "hosts": [CONTAINED],
        "reason": reason,
        "revoke_sessions": True,
        "revoke_certificates": True,
    }
    done = playbook("contain", extra)
    assert done.returncode == 0, done.stdout[-4000:]
    contained_by = time.time()
    assert recap(done.stdout)[CONTAINED]["failed"] == 0

    # Nothing in or out, tried from each side with real connections.
    assert not can_connect(plugin, ip(CORE), CORE_PORT, banner=False)
    assert not can_connect(plugin, ip(MGMT), PROXY_PORT, banner=False)
    assert not can_connect(core, ip(CONTAINED), PLUGIN_PORT, banner=False)
    assert not can_connect(hosts["core-02"], ip(CONTAINED), PLUGIN_PORT, banner=False)
    # SSH from the management network: mgmt-01 (and this test's own SSH, through the
    # segment's gateway) still get in.
    assert can_connect(mgmt, ip(CONTAINED), SSH_PORT, banner=False)
    assert plugin.check_output("hostname") == CONTAINED
    # The journal still reaches the collector.
    marker = f"contained-{uuid.uuid4()}"
    plugin.check_output(f"logger -t securecore-incident-marker {marker}")
    assert marker in find_markers(mgmt, "securecore-incident-marker", [marker], 30)["found"]

    # The connection open before is cut, and so is every new one.
    time.sleep(3)
    for log in ("/tmp/incident-flow-out",):
        outcomes = flow(plugin, log)
        assert any(ok for t, ok, _ in outcomes if t < contained_at), outcomes[:5]
        after = [ok for t, ok, _ in outcomes if t > contained_by]
        assert after and not any(after), outcomes[-10:]
    inbound = flow(core, "/tmp/incident-flow-in")
    assert any(ok for t, ok, _ in inbound if t < contained_at), inbound[:5]
    assert not any(ok for t, ok, _ in inbound if t > contained_by), inbound[-10:]

    # The core keeps serving its clients through the edge.
    answers = [request("GET", "/v1/whoami").status for _ in range(10)]
    assert answers == [200] * 10, answers

    # Its certificates are revoked: the stolen key opens no core host.
    refused_by_the_core(dmz, STOLEN)
    revoked = json.loads((ROOT / "inventories/lab/.state/pki-ca/revoked.json").read_text())
    compromised = {r["serial"] for r in revoked if r["reason"] == "key_compromise"}
    assert set(serials.values()) <= compromised
    assert core_serial not in {r["serial"] for r in revoked}
    assert held(plugin) == serials  # the contained host itself is left as it is
    plugin.check_output(f"rm -f {TLS}/planted.pem {TLS}/planted.key")

    # The zone's table is untouched; the quarantine is a table of its own.
    assert plugin.check_output("nft --stateless list table inet securecore") == zone_before
    assert f'comment "incident {opened}"' in plugin.check_output(f"nft list table inet {TABLE}")
    assert ruleset(plugin) != rules_before

    # The record: the backup, the containment, the sessions ended.
    record = incident(hosts, "show", opened)
    assert record["phase"] == "containment" and record["contained_hosts"] == [CONTAINED]
    actions = [e["details"] for e in record["timeline"] if e["kind"] == "action"]
    # Quarantined first, then backed up: nothing on the host can hold the containment up;
    # its certificates revoked once every host of the run is contained.
    assert [a["action"] for a in actions][:3] == ["contain", "backup", "revoke"]
    assert all(serial in actions[2]["summary"] for serial in serials.values()), actions[2]
    assert core_serial not in actions[2]["summary"]
    assert reason in actions[0]["summary"] and "plugin/plugin-01" in actions[0]["summary"]
    assert actions[0]["hosts"] == actions[1]["hosts"] == [CONTAINED]
    sessions = json.loads(core.check_output(f"{SECURECORE} sessions list --local -c {CONFIG}"))
    assert not [s for s in sessions if s["principal"] == "plugin/plugin-01"], sessions

    # Forensic evidence of this moment: plugin-01's processes and sockets, signed on
    # mgmt-01 with the evidence key, verified here with its public key.
    collected = playbook("collect", {"incident": opened, "hosts": [CONTAINED]})
    assert collected.returncode == 0, collected.stdout[-4000:]
    archives = sorted((ROOT / "output" / "incidents" / opened / "forensics").glob("*.tar.gz"))
    assert len(archives) == 1
    key = ROOT / "output" / "compliance" / f"evidence-{MGMT}.key.pub"
    verify = [sys.executable, "-m", "compliance.cli", "verify", str(archives[0])]
    checked = subprocess.run([*verify, "--trusted-key", str(key)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with tarfile.open(archives[0]) as bundle:
        name = archives[0].name.removesuffix(".tar.gz")
        ran = json.load(bundle.extractfile(f"{name}/run.json"))
        assert [h["error"] for h in ran["hosts"]] == [None], ran["hosts"]
        seen = json.load(bundle.extractfile(f"{name}/hosts/{CONTAINED}.json"))
        manifest = bundle.extractfile(f"{name}/manifest.json").read()
    flows = [p for p in seen["processes"] if "/tmp/incident-flow-out" in p["command"]]
    python = plugin.check_output('sha256sum "$(readlink -f /usr/bin/python3)"').split()[0]
    assert flows and flows[0]["exe_sha256"] == python, flows
    listening = {s["local"].rsplit(":", 1)[1] for s in seen["sockets"] if s["state"] == "LISTEN"}
    assert {"22", str(PLUGIN_PORT)} <= listening, listening
    assert f"table inet {TABLE}" in seen["firewall"]
    linked = incident(hosts, "show", opened)["artifacts"]
    assert linked[-1]["kind"] == "forensic"
    assert linked[-1]["sha256"] == hashlib.sha256(manifest).hexdigest()

    # The backup is on the controller and verifies against the host's manifest.
    directory = ROOT / "output" / "incidents" / opened / CONTAINED
    manifests = sorted(directory.glob("*.manifest.json"))
    assert len(manifests) == 1 and oct(directory.stat().st_mode & 0o777) == "0o700"
    manifest = json.loads(manifests[0].read_text())
    assert manifest["host"] == CONTAINED and manifest["files"]
    assert record["artifacts"][0]["sha256"] == manifest["archive_sha256"]
    verified = subprocess.run(
        [
            sys.executable,
            str(ROOT / "roles/incident/files/incident-backup"),
            "verify",
            str(directory / manifest["archive"]),
            str(manifests[0]),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr


def test_containing_again_changes_nothing_and_another_incident_is_refused(hosts, opened) -> None:
    # A site run cannot re-certify the contained host: the CAs hold it, and its keys and
    # certificates are left as they are.
    key = hosts[CONTAINED].check_output(f"sha256sum {TLS}/client.key {TLS}/client.pem")
    pki = run("ansible-playbook", "playbooks/pki.yml", "--limit", CONTAINED, check=False)
    assert pki.returncode != 0 and f"{CONTAINED} is held by the CAs" in pki.stdout, pki.stdout
    assert hosts[CONTAINED].check_output(f"sha256sum {TLS}/client.key {TLS}/client.pem") == key
    request = {"incident": opened, "hosts": [CONTAINED], "reason": "again"}
    again = playbook("contain", {**request, "revoke_certificates": True})
    assert again.returncode == 0, again.stdout[-3000:]
    changed = {h: c["changed"] for h, c in recap(again.stdout).items()}
    assert {CONTAINED, "localhost", CORE} <= set(changed) and set(changed.values()) == {0}, changed
    fields = {
        "title": "another",
        "severity": "low",
        "impact": "degradation",
        "source": "user_report",
    }
    other = incident(hosts, "open", *(f"--{k}={v}" for k, v in fields.items()))
    refused = playbook("release", {"incident": other["id"], "hosts": [CONTAINED]})
    assert refused.returncode != 0
    assert f"{CONTAINED} is contained for {opened}, not {other['id']}" in refused.stdout


def test_release_restores_the_zones_rules_exactly_and_new_certificates(
    hosts, opened, rules_before
) -> None:
    plugin = hosts[CONTAINED]
    revoked = held(plugin)
    checked = playbook("release", {"incident": opened, "hosts": [CONTAINED]}, "--check")
    assert checked.returncode == 0 and recap(checked.stdout)[CONTAINED]["changed"] >= 1
    assert plugin.run(f"nft list table inet {TABLE}").rc == 0  # check mode changed nothing
    done = playbook("release", {"incident": opened, "hosts": [CONTAINED], "reason": "rebuilt"})
    assert done.returncode == 0, done.stdout[-3000:]
    assert plugin.run(f"nft list table inet {TABLE}").rc != 0
    assert not plugin.file(f"/etc/nftables.d/{TABLE}.nft").exists
    assert can_connect(plugin, ip(CORE), CORE_PORT, banner=False)
    assert can_connect(hosts[CORE], ip(CONTAINED), PLUGIN_PORT, banner=False)
    assert ruleset(plugin) == rules_before  # the diff is empty
    # New keys and certificates in place of the revoked: the core takes plugin-01's, and
    # the copy of its old key stays refused.
    renewed = held(plugin)
    assert not set(renewed.values()) & set(revoked.values()), (renewed, revoked)
    assert https(plugin, ip(CORE), "GET", "/v1/whoami")[0] == 200
    refused_by_the_core(hosts["dmz-01"], STOLEN)
    record = incident(hosts, "show", opened)
    assert record["contained_hosts"] == []
    actions = [e["details"] for e in record["timeline"] if e["kind"] == "action"]
    assert [a["action"] for a in actions][-2:] == ["release", "reissue"]
    assert all(f"{name} {serial}" in actions[-1]["summary"] for name, serial in renewed.items())
    again = playbook("release", {"incident": opened, "hosts": [CONTAINED]})
    assert again.returncode == 0, again.stdout[-3000:]
    assert recap(again.stdout)[CONTAINED]["changed"] == 0
    assert len(incident(hosts, "show", opened)["timeline"]) == len(record["timeline"])
