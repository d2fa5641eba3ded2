"""Who reads the core service's /metrics (REQ-MON-9): a real `securecore serve` over
mutual TLS 1.3 on loopback. The site's Prometheus (a monitoring/HOST certificate) and
an administrator read it; a plugin's, a core host's and the edge's own certificates are
refused, and so is a client the edge relays (the edge routes no /metrics, REQ-EDGE-3):
the series map the site's plugins, principals and audit log."""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from securecore_lab.devsetup import development_ca, issue_development_leaf
from tests.support.devserver import context, dev_server

EDGE = "dmz/dev-edge"


def add_monitoring_identity(tls: Path) -> None:
    """TLS/monitoring.pem (spiffe://securecore/monitoring/mgmt-01), from a second CA
    that joins the bundle, as roles/pki issues the monitoring hosts theirs."""
    ca, ca_key = development_ca("SecureCore Development CA (monitoring)")
    with (tls / "ca.pem").open("ab") as bundle:
        bundle.write(ca.public_bytes(serialization.Encoding.PEM))
    sans = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.UniformResourceIdentifier("spiffe://securecore/monitoring/mgmt-01"),
    ]
    spec = ("mgmt-01", [ExtendedKeyUsageOID.CLIENT_AUTH], sans)
    issue_development_leaf(tls, "monitoring", ca, ca_key, spec)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("metrics-access") / "dev"

    def prepare(text: str) -> str:
        add_monitoring_identity(directory / "tls")
        return text + f'\n[edge]\nprincipals = ["{EDGE}"]\n'

    with dev_server(directory, edit_config=prepare) as running:
        yield running


def scrape(server, client: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server["port"], context=context(server["tls"], client=client), timeout=10
    )
    try:
        connection.request("GET", "/metrics", headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@pytest.mark.parametrize("client", ["monitoring", "admin"])
def test_the_monitoring_and_administrators_read_the_metrics(server, client) -> None:
    status, text = scrape(server, client)
    assert status == 200 and "securecore_audit_uncheckpointed_records" in text


@pytest.mark.parametrize("client", ["plugin", "core", "edge"])
def test_every_other_principal_is_refused(server, client) -> None:
    status, text = scrape(server, client)
    assert status == 403, text
    assert json.loads(text)["error"]["code"] == "forbidden"
    assert "securecore_" not in text


@pytest.mark.parametrize("relayed", ["admin", "plugin"])
def test_a_client_the_edge_relays_is_refused(server, relayed) -> None:
    der = x509.load_pem_x509_certificate((server["tls"] / f"{relayed}.pem").read_bytes())
    value = base64.b64encode(der.public_bytes(serialization.Encoding.DER)).decode()
    status, text = scrape(server, "edge", {"client-cert": f":{value}:"})
    assert status == 403, text
    assert "securecore_" not in text
