"""Revocation on the lab: a certificate revoked with `pki_revoke` is refused by every core
host and by the DMZ edge, and its sessions end within the TLS policy's watch_seconds,
with no restart (the role's handler reloads the services too); the holder works with
its new one."""

from __future__ import annotations

import json
import time

from tests.support.commands import run
from tests.support.edge import EDGE_ADDRESS, EDGE_PORT
from tests.support.labhosts import TLS, connect, https, lab_spec

BOUND = 60  # seconds: the most watch_seconds may be (the default is 5)
OLD = "/tmp/revoked-dmz/client"


def test_a_revoked_certificate_is_refused_by_every_core_host_and_its_sessions_end() -> None:
    spec = lab_spec()
    core_hosts = [h for h in spec.hosts if h.segment == "core"]
    dmz = connect(spec, next(h for h in spec.hosts if h.name == "dmz-01"))
    dmz.check_output(
        f"install -d -m 0700 /tmp/revoked-dmz && cp -p {TLS}/client.pem "
        f"{TLS}/client.key /tmp/revoked-dmz/"
    )
    serial = dmz.check_output(f"openssl x509 -noout -serial -in {OLD}.pem").split("=")[1].lower()
    core = str(core_hosts[0].address)
    status, session = https(dmz, core, "POST", "/v1/sessions", client=OLD)
    token = session["access_token"] if status == 201 else None
    started = time.monotonic()
    revoked = run(
        "ansible-playbook",
        "playbooks/pki.yml",
        "-e",
        json.dumps({"pki_revoke": [{"serial": serial, "reason": "key_compromise"}]}),
        check=False,
        timeout=900,
    )
    assert revoked.returncode == 0, revoked.stdout[-3000:]
    assert "Reload the services that read the CA and CRL" in revoked.stdout
    for host in core_hosts:
        deadline = max(time.monotonic(), started) + BOUND
        while https(dmz, str(host.address), "GET", "/v1/whoami", client=OLD)[0] != 0:
            assert time.monotonic() < deadline, f"{host.name} still accepts the revoked certificate"
            time.sleep(2)
        # The re-issued certificate of the same host is accepted.
        assert https(dmz, str(host.address), "GET", "/v1/whoami")[0] == 200
    # The DMZ edge refuses it too (HAProxy reloads for the new CRL).
    deadline = max(time.monotonic(), started) + BOUND
    while https(dmz, EDGE_ADDRESS, "GET", "/v1/whoami", client=OLD, port=EDGE_PORT)[0] != 0:
        assert time.monotonic() < deadline, "the edge still accepts the revoked certificate"
        time.sleep(2)
    # ...while it serves: the re-issued certificate gets through it (to the core, which
    # refuses a DMZ host's identity relayed by the edge, and says so).
    status, answer = https(dmz, EDGE_ADDRESS, "GET", "/v1/whoami", port=EDGE_PORT)
    assert status == 403 and answer["error"]["code"] == "forwarded_identity_refused", answer
    if token:
        status, answer = https(dmz, core, "GET", "/v1/sessions/current", token=token)
        assert status == 401, answer  # from the new certificate: the session ended anyway
    dmz.run("rm -rf /tmp/revoked-dmz")
