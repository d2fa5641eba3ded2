"""`securecore serve` on a development setup: mutual TLS 1.3, identity, JSON errors, shutdown.

Real TLS on loopback against the real server process; the client identity
must come from the verified certificate and never from a header.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import ssl

import pytest

from tests.support.devserver import admin, call, context, dev_server, get, scrape

FORGED_HEADERS = {
    "X-Forwarded-Client-Cert": "By=spiffe://securecore/core/core-01;URI=spiffe://securecore/admin/root",
    "X-Client-Cert": "-----BEGIN CERTIFICATE-----forged",
    "X-SSL-Client-S-DN": "CN=root",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with dev_server(tmp_path_factory.mktemp("serve") / "dev") as running:
        yield running


def test_the_client_certificate_names_the_caller(server) -> None:
    status, body = get(server, "/v1/whoami")
    assert status == 200
    assert body["kind"] == "admin" and body["spiffe_id"] == "spiffe://securecore/admin/admin"


def test_forged_identity_headers_are_never_trusted(server) -> None:
    status, body = get(server, "/v1/whoami", headers=FORGED_HEADERS)
    assert status == 200 and body["name"] == "admin" and body["subject"] == "CN=admin"


def receipt(server, method: str, path: str, client: str = "admin") -> tuple[int, str | None]:
    """The answer's status and its audit-record header."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server["port"], context=context(server["tls"], client=client), timeout=10
    )
    try:
        connection.request(method, path)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("audit-record")
    finally:
        connection.close()


def test_every_audited_answer_names_its_durable_audit_record(server) -> None:
    status, first = receipt(server, "GET", "/v1/whoami")
    assert status == 200 and first is not None
    status, second = receipt(server, "GET", "/no/such/thing")  # audited, then 404
    assert status == 404 and second is not None and int(second) > int(first)
    # The record the receipt names is this request's decision, already in the log.
    exported = admin(server, "audit", "export").stdout.splitlines()
    records = {
        line["seq"]: line["record"]
        for line in map(json.loads, exported)
        if line.get("type") == "record"
    }
    record = records[int(first)]
    assert (record["actor"], record["outcome"]) == ("admin/admin", "allowed"), record
    assert record["action"].startswith("policy.") and record["details"]["source"] == "127.0.0.1"
    # Unaudited paths (health, readiness) give none.
    assert receipt(server, "GET", "/healthz") == (200, None)


def test_health_and_readiness(server) -> None:
    assert get(server, "/healthz") == (200, {"status": "ok"})
    status, body = get(server, "/readyz")
    assert status == 200 and body["checks"] == ["audit_store", "audit_writer", "signing_key"]


def test_errors_are_json_with_stable_codes(server) -> None:
    assert get(server, "/no/such/thing") == (
        404,
        {"error": {"code": "not_found", "message": "Not Found"}},
    )


def test_a_server_certificate_cannot_be_used_as_a_client(server) -> None:
    # Valid and from the site's CA, but for serverAuth only: refused at the handshake.
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        get(server, "/v1/whoami", client="server")


def test_without_a_client_certificate_there_is_no_connection(server) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        get(server, "/healthz", client=None)


def test_tls_12_is_refused(server) -> None:
    with pytest.raises(ssl.SSLError):
        get(server, "/healthz", maximum=ssl.TLSVersion.TLSv1_2)


def test_sessions_over_the_api(server) -> None:
    status, pair = call(server, "POST", "/v1/sessions")
    assert status == 201 and pair["token_type"] == "Bearer"
    status, current = call(server, "GET", "/v1/sessions/current", token=pair["access_token"])
    assert status == 200 and current["sub"] == "admin/admin"
    assert call(server, "GET", "/v1/sessions/current")[1]["error"]["code"] == "unauthenticated"
    status, renewed = call(
        server, "POST", "/v1/sessions/refresh", body={"refresh_token": pair["refresh_token"]}
    )
    assert status == 200 and renewed["session_id"] == pair["session_id"]
    status, error = call(server, "POST", "/v1/sessions/refresh", body={"token": "x"})
    assert status == 422 and error["error"]["code"] == "invalid_request"
    # Reusing the first refresh token revokes the session.
    status, error = call(
        server, "POST", "/v1/sessions/refresh", body={"refresh_token": pair["refresh_token"]}
    )
    assert status == 401 and error["error"]["code"] == "refresh_reuse"
    status, error = call(server, "GET", "/v1/sessions/current", token=renewed["access_token"])
    assert status == 401 and error["error"]["code"] == "revoked"


def test_a_session_can_be_ended_by_its_holder(server) -> None:
    _, pair = call(server, "POST", "/v1/sessions")
    status, ended = call(server, "DELETE", "/v1/sessions/current", token=pair["access_token"])
    assert status == 204 and ended is None
    status, error = call(server, "GET", "/v1/sessions/current", token=pair["access_token"])
    assert status == 401 and error["error"]["code"] == "revoked"


def test_metrics_are_prometheus_text_with_the_alerted_series(server) -> None:
    get(server, "/v1/whoami")
    response, text = scrape(server)
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/plain")
    assert 'securecore_requests_total{method="GET",route="/v1/whoami",status="200"}' in text
    assert 'securecore_policy_decisions_total{outcome="allowed",stage="rate_limit"}' in text
    assert "securecore_audit_uncheckpointed_records" in text
    assert 'securecore_certificate_not_after_seconds{name="server_certificate"}' in text
    assert 'securecore_plugins{state="active"} 0.0' in text
    # REQ-AUDIT-6's bound for the monitoring (checkpoint interval plus grace period).
    assert "securecore_audit_witness_deadline_seconds " in text
    # REQ-PERF-3: the policy decisions above were audited, each write timed.
    written = re.search(r"(?m)^securecore_audit_write_seconds_count (\S+)$", text)
    assert written is not None and float(written[1]) >= 1, text


def test_the_openapi_document_is_served_and_bodies_are_validated(server) -> None:
    status, document = get(server, "/openapi.json")
    assert status == 200 and document["openapi"] == "3.1.0"
    refresh = document["paths"]["/v1/sessions/refresh"]["post"]
    schema = refresh["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["refresh_token"] and schema["additionalProperties"] is False
    assert "422" in refresh["responses"]
    status, error = call(server, "POST", "/v1/sessions/refresh", body={"refresh_token": 5, "x": 1})
    assert status == 422
    assert error["error"]["message"] == "x: unknown property; refresh_token: must be a string"


# Last: it stops the module's server.
def test_logs_are_json_and_shutdown_is_graceful(server) -> None:
    get(server, "/healthz")
    process = server["process"]
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)
    text = server["log"].read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    # uvicorn re-raises SIGTERM once it has shut down cleanly (systemd counts
    # that as a clean stop); a crash would be another code.
    assert process.returncode in (0, -signal.SIGTERM)
    assert any(line["message"] == "Shutting down" for line in lines)
    assert any(
        line["logger"] == "uvicorn.access" and "/healthz" in line["message"] for line in lines
    )
    assert any("Finished server process" in line["message"] for line in lines)
    assert not any("color_message" in line for line in lines)
