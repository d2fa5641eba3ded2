"""The DMZ edge on the lab (roles/edge on dmz-01), from the outside: the controller is an
API client with the lab administrator's certificate. What the edge refuses never
reaches the core (no audit receipt in the answer, and the edge's log names the
refusal); what it passes reaches a ready core instance with the client's verified
identity; an instance that stops is out of the balance within seconds, and no
idempotent request fails for it."""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import http.client
import ipaddress
import json
import re
import shlex
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.support.commands import ROOT
from tests.support.edge import (
    EDGE_ADDRESS,
    Answer,
    client_context,
    forged_client,
    raw_exchange,
    request,
)
from tests.support.labhosts import TLS, https, lab_spec
from tests.support.service_load import ADMIN_DIR, install_admin_certificate

SPEC = lab_spec()
CORE = [h for h in SPEC.hosts if h.segment == "core"]
FIGURES = ROOT / "output" / "edge"
SECURECORE = (
    "runuser -u securecore -- env SOFTHSM2_CONF=/etc/securecore/softhsm2.conf "
    "/opt/securecore/current/venv/bin/securecore"
)


def since(host) -> str:
    return host.check_output("date -u '+%Y-%m-%d %H:%M:%S'")


def journal(host, tag: str, start: str) -> str:
    """Lines logged under TAG since START: haproxy (one per request) or edge_waf
    (nginx's error log: ModSecurity's blocks)."""
    return host.check_output(f"journalctl -q -o cat -t {tag} --since {shlex.quote(start + ' UTC')}")


def balanced(dmz) -> dict[str, str]:
    """Each core instance's state in the balancer, from HAProxy's statistics."""
    fetch = "import urllib.request as u;print(u.urlopen('http://127.0.0.1:8405/stats;csv;norefresh').read().decode())"
    states = {}
    for line in dmz.check_output(f"python3 -c {shlex.quote(fetch)}").splitlines():
        fields = line.split(",")
        if len(fields) > 17 and fields[0] == "be_core" and fields[1] != "BACKEND":
            states[fields[1]] = fields[17]
    return states


def wait_state(dmz, name: str, state: str, seconds: float) -> float:
    """Seconds until the balancer shows NAME in STATE (at most SECONDS)."""
    started = time.monotonic()
    while balanced(dmz).get(name) != state:
        assert time.monotonic() - started < seconds, f"{name} not {state}: {balanced(dmz)}"
        time.sleep(0.25)
    return round(time.monotonic() - started, 1)


def der_base64(pem: str) -> str:
    """The first certificate of PEM, as RFC 9440's Client-Cert header carries it."""
    certificate = x509.load_pem_x509_certificate(pem.encode())
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()


def forged_token(kid: str, subject: str = "admin/lab-admin") -> str:
    """An ES256 JWT naming a pinned key id, signed with a key of the forger's own."""
    key = ec.generate_private_key(ec.SECP256R1())

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": kid}).encode())
    claims = b64(json.dumps({"sub": subject, "exp": int(time.time()) + 300}).encode())
    r, s = decode_dss_signature(key.sign(header + b"." + claims, ec.ECDSA(hashes.SHA256())))
    signature = b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    return (header + b"." + claims + b"." + signature).decode()


def kid_of(token: str) -> str:
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]


def audit_record(core, seq: int) -> dict:
    """Record SEQ of the shared audit log, as core-01 exports it."""
    export = f"{SECURECORE} audit export -c /etc/securecore/securecore.toml | tail -n 500"
    for _ in range(20):
        for line in core.check_output(export).splitlines():
            entry = json.loads(line)
            if entry["type"] == "record" and entry["seq"] == seq:
                return entry["record"]
        time.sleep(0.5)
    raise AssertionError(f"audit record {seq} is not in the log")


def refused_at_the_edge(answer: Answer, status: int) -> None:
    assert answer.status == status, answer
    assert answer.receipt is None, f"the core decided on it: {answer}"


# --- who gets in, as whom -------------------------------------------------------------------


def test_only_tls13_clients_with_a_certificate_of_the_site_get_in(tmp_path: Path) -> None:
    answer = request("GET", "/v1/whoami")
    assert answer.status == 200 and answer.receipt, answer
    assert answer.body["spiffe_id"] == "spiffe://securecore/admin/lab-admin", answer.body
    assert answer.body["via"]["spiffe_id"] == "spiffe://securecore/dmz/dmz-01", answer.body
    assert "server" not in answer.headers  # no product or version given away
    assert request("GET", "/v1/whoami", context=client_context(None)).status == 0
    # A certificate of another CA under the site's names.
    assert request("GET", "/v1/whoami", context=client_context(forged_client(tmp_path))).status == 0
    with pytest.raises(ssl.SSLError):
        raw_exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", client_context(tls12=True))


def test_the_curl_command_scripts_run_lab_prints_works() -> None:
    printed = (ROOT / "scripts" / "run").read_text()
    command = re.search(r"curl --cacert .*?/v1/whoami", printed, re.S)
    assert command, "scripts/run lab prints no curl command for the edge"
    argv = shlex.split(command.group(0).replace("\\\\\n", " ").replace("\\\n", " "))
    answer = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["spiffe_id"] == "spiffe://securecore/admin/lab-admin"


def test_a_client_cannot_choose_the_identity_or_the_source_the_core_sees(hosts) -> None:
    other = hosts["core-01"].file(f"{TLS}/client.pem").content_string
    answer = request(
        "GET",
        "/v1/whoami",
        headers={
            "Client-Cert": f":{der_base64(other)}:",
            "X-Forwarded-For": "203.0.113.7",
            "Forwarded": "for=203.0.113.7",
        },
    )
    assert answer.status == 200 and answer.receipt, answer
    assert answer.body["spiffe_id"] == "spiffe://securecore/admin/lab-admin", answer.body
    # The core's record of the decision names both identities and the real source.
    record = audit_record(hosts["core-01"], int(answer.receipt))
    assert record["actor"] == "admin/lab-admin", record
    assert record["details"]["via"] == "dmz/dmz-01", record
    # The controller, as dmz-01 sees it: podman's gateway of the DMZ network.
    controller = str(ipaddress.ip_interface(f"{EDGE_ADDRESS}/24").network[1])
    assert record["details"]["source"] == controller, record


def test_around_the_edge_the_core_trusts_no_forwarded_identity(hosts, tmp_path: Path) -> None:
    """From the DMZ straight to the core: a principal that is not the edge gets its own
    identity whatever it forwards; the edge's own certificate with a forged forwarded
    certificate gets nothing."""
    dmz, core = hosts["dmz-01"], str(CORE[0].address)
    install_admin_certificate(dmz)
    try:
        core_client = der_base64(hosts["core-01"].file(f"{TLS}/client.pem").content_string)
        status, who = https(
            dmz,
            core,
            "GET",
            "/v1/whoami",
            client=f"{ADMIN_DIR}/client",
            headers={"Client-Cert": f":{core_client}:", "X-Forwarded-For": "203.0.113.7"},
        )
        assert status == 200, who
        assert who["spiffe_id"] == "spiffe://securecore/admin/lab-admin" and not who.get("via")
        # dmz-01's own certificate (the edge's principal) forwarding a certificate the
        # site's CA never issued, under the administrator's names.
        forged = (forged_client(tmp_path) / "client.pem").read_text()
        status, refused = https(
            dmz, core, "GET", "/v1/whoami", headers={"Client-Cert": f":{der_base64(forged)}:"}
        )
        assert status == 403, refused
        assert refused["error"]["code"] == "forwarded_identity_refused", refused
    finally:
        dmz.run(f"rm -rf {ADMIN_DIR}")


def test_only_haproxy_and_the_waf_reach_the_sockets_behind_the_edge(hosts) -> None:
    """The second hop (core.sock) relays whatever it gets under dmz-01's certificate,
    client-cert included: a local user outside the edge's group cannot connect to it,
    nor to the WAF's socket."""
    dmz = hosts["dmz-01"]
    for socket_name in ("core.sock", "waf.sock"):
        probe = (
            "import socket;s=socket.socket(socket.AF_UNIX);"
            f"s.connect('/var/lib/haproxy/edge/{socket_name}')"
        )
        refused = dmz.run(f"runuser -u nobody -- python3 -c {shlex.quote(probe)}")
        assert refused.rc != 0 and "PermissionError" in refused.stderr, refused.stderr
    # The WAF's own user does reach the core hop (the probe itself works).
    probe = (
        "import socket;s=socket.socket(socket.AF_UNIX);s.connect('/var/lib/haproxy/edge/core.sock')"
    )
    allowed = dmz.run(
        f"runuser -u securecore-waf -g securecore-edge -- python3 -c {shlex.quote(probe)}"
    )
    assert allowed.rc == 0, allowed.stderr


# --- refused early ---------------------------------------------------------------------------


def test_session_routes_need_a_token_the_edge_can_verify(hosts) -> None:
    dmz = hosts["dmz-01"]
    start = since(dmz)
    made = request("POST", "/v1/sessions")
    assert made.status == 201, made
    token = made.body["access_token"]
    call = "/v1/plugins/plugin-01/call"
    refused_at_the_edge(request("GET", "/v1/sessions/current"), 401)
    refused_at_the_edge(request("GET", "/v1/sessions/current", token=token[:-4] + "AAAA"), 401)
    # A pinned key id, the forger's own key.
    refused_at_the_edge(
        request("GET", "/v1/sessions/current", token=forged_token(kid_of(token))), 401
    )
    refused_at_the_edge(request("POST", call, body={"op": "tickets.list", "args": {}}), 401)
    assert request("GET", "/v1/sessions/current", token=token).status == 200
    assert request("DELETE", "/v1/sessions/current", token=token).status == 204
    log = journal(dmz, "haproxy", start)
    assert log.count("refused=token") >= 4, log
    assert token not in log and token.split(".")[2] not in log  # tokens are never logged


# What each sends, the edge's answer, and (for the WAF's) the Core Rule Set's family of
# rules that must have scored it: 942 SQL injection, 941 XSS, 930 local file
# inclusion, 913 scanners.
ATTACKS = {
    "sql injection": ("GET", "/v1/whoami?id=1%27%20OR%20%271%27=%271%27--", {}, 403, "942"),
    "cross-site scripting": (
        "GET",
        "/v1/whoami?q=%3Cscript%3Ealert(document.cookie)%3C/script%3E",
        {},
        403,
        "941",
    ),
    "path traversal": ("GET", "/v1/whoami?file=../../../../etc/passwd", {}, 403, "930"),
    "scanner": ("GET", "/v1/whoami", {"User-Agent": "sqlmap/1.7.2#stable"}, 403, "913"),
    "oversized header": ("GET", "/v1/whoami", {"X-Padding": "a" * 20000}, 400, None),
    "method": ("PUT", "/v1/whoami", {}, 405, None),
    # Paths the core would decode or route differently from the edge's checks.
    "encoded path": ("GET", "/v1/sessions/%63urrent", {}, 404, None),
    "dotted path": ("GET", "/v1/../metrics", {}, 404, None),
    "route not exposed": ("GET", "/metrics", {}, 404, None),
}
# Attacks in a JSON body: declared, the WAF parses it; undeclared, it is refused.
BODY_ATTACKS = {
    "sql injection in json": ({"Content-Type": "application/json"}, 403, "942"),
    "json without its type": ({}, 415, None),
    "json as text": ({"Content-Type": "text/plain"}, 415, None),
}
WAF_AUDIT_LOG = "/var/log/modsecurity/audit.log"


def waf_blocks(dmz, after_line: int) -> list[dict]:
    """The WAF's audit log entries after line AFTER_LINE that block (403): the rule
    ids that matched, and every field the log has."""
    lines = dmz.check_output(f"tail -n +{after_line + 1} {WAF_AUDIT_LOG}").splitlines()
    entries = [json.loads(line)["transaction"] for line in lines if line.strip()]
    return [e for e in entries if e["response"]["http_code"] == 403]


@pytest.mark.parametrize("attack", ATTACKS)
def test_attacks_are_refused_at_the_edge_and_never_reach_the_core(hosts, attack) -> None:
    dmz = hosts["dmz-01"]
    start = since(dmz)
    logged = int(dmz.check_output(f"wc -l < {WAF_AUDIT_LOG}"))
    method, path, headers, status, rules = ATTACKS[attack]
    answer = request(method, path, headers=headers)
    refused_at_the_edge(answer, status)
    if rules:
        assert answer.body["error"]["code"] == "waf_blocked", answer
        # The block, with the ids of the rules that scored it, and the verdict in
        # the edge's request log.
        blocks = waf_blocks(dmz, logged)
        assert len(blocks) == 1, blocks
        ids = {m["details"]["ruleId"] for m in blocks[0]["messages"]}
        assert "949110" in ids and any(i.startswith(rules) for i in ids), ids
        assert "headers" not in blocks[0]["request"]  # no token or certificate kept
        assert "waf=blocked" in journal(dmz, "haproxy", start)


@pytest.mark.parametrize("attack", BODY_ATTACKS)
def test_attacks_in_bodies_are_refused_at_the_edge(hosts, attack) -> None:
    dmz = hosts["dmz-01"]
    logged = int(dmz.check_output(f"wc -l < {WAF_AUDIT_LOG}"))
    headers, status, rules = BODY_ATTACKS[attack]
    body = json.dumps({"refresh_token": "x' OR '1'='1' UNION SELECT password FROM users --"})
    answer = request("POST", "/v1/sessions/refresh", headers=headers, raw_body=body.encode())
    refused_at_the_edge(answer, status)
    if rules:
        blocks = waf_blocks(dmz, logged)
        ids = {m["details"]["ruleId"] for block in blocks for m in block["messages"]}
        assert any(i.startswith(rules) for i in ids), ids


def test_request_smuggling_and_oversized_bodies_are_refused_at_the_edge() -> None:
    smuggling = (
        b"POST /v1/sessions HTTP/1.1\r\nHost: edge\r\nContent-Length: 44\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /v1/admin/status HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    for attempt in (
        smuggling,
        b"POST /v1/sessions HTTP/1.1\r\nHost: edge\r\n"
        b"Content-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        b"POST /v1/sessions HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ):
        answer = raw_exchange(attempt)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
        assert answer.count(b"HTTP/1.1 ") == 1 and b"audit-record" not in answer, answer[:600]
    refused_at_the_edge(
        request("POST", "/v1/sessions/refresh", body={"refresh_token": "r" * 5000}), 413
    )


def test_a_slow_client_is_cut_off_before_it_holds_the_edge() -> None:
    """Headers that trickle in (slowloris) get 408 once the request-header timeout
    (5 s) has passed, and the connection is closed: a slow client cannot hold a
    connection open for long."""
    context = client_context()
    with (
        socket.create_connection((EDGE_ADDRESS, 443), timeout=20) as raw,
        context.wrap_socket(raw, server_hostname=EDGE_ADDRESS) as tls,
    ):
        started = time.monotonic()
        tls.sendall(b"GET /v1/whoami HTTP/1.1\r\nHost: edge\r\n")
        tls.settimeout(1)
        answer = b""
        for _ in range(15):  # one more header line a second, never the end
            try:
                chunk = tls.recv(4096)
            except TimeoutError:
                tls.sendall(b"X-Slow: a\r\n")
                continue
            except (OSError, ssl.SSLError):
                break
            answer += chunk
            if not chunk or answer.startswith(b"HTTP/"):
                break
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"audit-record" not in answer
    assert elapsed < 12, elapsed


def test_rates_over_the_edge_limit_get_429_with_retry_after() -> None:
    """Over the limit per client certificate (1000 requests per 10 s): refused requests
    count too, so PUTs (405 at the edge) make the flood and never load the core."""

    def flood(count: int) -> list[int]:
        connection = http.client.HTTPSConnection(
            EDGE_ADDRESS, 443, context=client_context(), timeout=10
        )
        statuses = []
        for _ in range(count):
            connection.request("PUT", "/v1/whoami")
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            if response.getheader("connection") == "close":
                connection.close()
        connection.close()
        return statuses

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = [s for statuses in pool.map(flood, [260] * 4) for s in statuses]
    assert set(answers) == {405, 429}, sorted(set(answers))
    limited = request("GET", "/v1/whoami")
    refused_at_the_edge(limited, 429)
    assert int(limited.headers["retry-after"]) > 0
    deadline = time.monotonic() + 30  # the window (10 s) passes; the client is let in again
    while request("GET", "/v1/whoami").status != 200:
        assert time.monotonic() < deadline, "still limited"
        time.sleep(1)


# --- balancing and failover ------------------------------------------------------------------


def test_every_core_instance_is_balanced_and_the_edge_exports_metrics(hosts) -> None:
    dmz = hosts["dmz-01"]
    assert balanced(dmz) == {h.name: "UP" for h in CORE}
    served = {request("GET", "/v1/whoami").status for _ in range(10)}
    assert served == {200}
    fetch = "import urllib.request as u;print(u.urlopen('http://127.0.0.1:8405/metrics').read().decode())"
    metrics = dmz.check_output(f"python3 -c {shlex.quote(fetch)}")
    for core in CORE:
        assert (
            f'haproxy_server_status{{proxy="be_core",server="{core.name}",state="UP"}} 1' in metrics
        )
    # Not on the public address.
    assert dmz.run(f"python3 -c {shlex.quote(fetch.replace('127.0.0.1', EDGE_ADDRESS))}").rc != 0


def error_code(answer: Answer) -> str:
    """The error code of a JSON error answer (the edge's and the core's), else ''."""
    body = answer.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code", ""))
    return ""


@contextlib.contextmanager
def load_through_the_edge(
    token: str, *, gets: int, posts: int, pause: float
) -> Iterator[dict[str, list[Answer]]]:
    """Clients through the edge for as long as the block runs: GETS threads asking for
    /v1/whoami (a request the edge may retry) and POSTS threads calling the plugin (one
    it must not), each pausing PAUSE seconds between requests. Yields their answers by
    method, complete once the block has ended."""
    answers: dict[str, list[Answer]] = {"GET": [], "POST": []}
    stop = threading.Event()
    call = {"op": "tickets.list", "args": {}}

    def client(method: str, path: str) -> None:
        while not stop.is_set():
            body = call if method == "POST" else None
            answers[method].append(request(method, path, token=token, body=body, timeout=10))
            time.sleep(pause)

    workers = [threading.Thread(target=client, args=("GET", "/v1/whoami")) for _ in range(gets)] + [
        threading.Thread(target=client, args=("POST", "/v1/plugins/plugin-01/call"))
        for _ in range(posts)
    ]
    for worker in workers:
        worker.start()
    try:
        yield answers
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)


def test_a_core_instance_that_fails_is_out_within_seconds_and_no_idempotent_request_fails(
    hosts,
) -> None:
    """Load from the controller (GETs, which the edge may retry, and plugin calls, POSTs
    it must not), core-01's service killed and kept down, then started again.

    The load (at most 20 requests/s) stays under what one core host allows a client
    alone: each of the N serving hosts enforces 1/N of the client's rate limit
    (REQ-HA-2: 25/s of 50/s here), so with core-01 out core-02 refuses anything
    above its share, for as long as core-01 stays out (a load above it passed only
    while the outage was shorter than the share's burst lasts)."""
    dmz, victim = hosts["dmz-01"], hosts["core-01"]
    made = request("POST", "/v1/sessions")
    assert made.status == 201, made
    token = made.body["access_token"]
    try:
        with load_through_the_edge(token, gets=3, posts=1, pause=0.2) as answers:
            time.sleep(3)
            killing = time.monotonic()
            victim.check_output("systemctl kill -s KILL securecore && systemctl stop securecore")
            stopped_after = round(time.monotonic() - killing, 1)
            out_after = wait_state(dmz, "core-01", "DOWN", 15)
            time.sleep(3)
    finally:
        victim.check_output("systemctl start securecore")
    back_after = wait_state(dmz, "core-01", "UP", 60)

    def counted(sent: list[Answer]) -> dict[str, object]:
        # What each failure was (its status and error code, or why no answer came),
        # so that a failed run says which hop refused.
        failures = collections.Counter(
            f"{a.status} {a.refused or error_code(a)}" for a in sent if a.status != 200
        )
        return {"sent": len(sent), "failed": sum(failures.values()), "why": dict(failures)}

    figures = {
        "idempotent": counted(answers["GET"]),
        "non_idempotent": counted(answers["POST"]),
        "killed_and_stopped_in_s": stopped_after,
        "out_of_balance_after_s": out_after,
        "back_after_start_s": back_after,
    }
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / "failover.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("edge failover:", json.dumps(figures))
    assert figures["idempotent"]["sent"] > 50 and figures["idempotent"]["failed"] == 0, figures
    assert out_after <= 5, figures
    assert request("DELETE", "/v1/sessions/current", token=token).status == 204


def test_reloads_of_the_edge_under_load_lose_no_request(hosts) -> None:
    """HAProxy reloads whenever its certificates, keys or CRLs change (a rotation
    reloads it several times): a reload must not fail a request in flight or one that
    arrives just then, a plugin call (which nobody may retry) included. Fails when a
    hop keeps idle connections that the old process closes at its reload."""
    dmz = hosts["dmz-01"]
    made = request("POST", "/v1/sessions")
    assert made.status == 201, made
    token = made.body["access_token"]
    try:
        with load_through_the_edge(token, gets=2, posts=3, pause=0.1) as answers:
            for _ in range(12):
                time.sleep(0.7)
                dmz.check_output("systemctl reload haproxy")
            time.sleep(1)
    finally:
        # The administrator may hold 5 live sessions: later checks sign in too.
        signed_out = request("DELETE", "/v1/sessions/current", token=token)
    sent = answers["GET"] + answers["POST"]
    failed = [answer for answer in sent if answer.status != 200]
    assert len(sent) > 100 and failed == [], (len(sent), failed[:5])
    assert signed_out.status == 204, signed_out
