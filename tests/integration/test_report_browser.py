"""report.html in a real headless Chromium (Debian's chromium package): the page an
auditor opens renders its summary, hosts and results and the controls they support,
runs no script, asks for nothing over the network, and shows what hosts said as text.
The period report's page, with its charts, is rendered in
tests/integration/test_compliance_period.py, over a year of evidence."""

from __future__ import annotations

from pathlib import Path

import pytest

from compliance.catalog import load_catalogs
from compliance.html_report import render
from compliance.report_sections import control_sections
from tests.support.browser import chromium, png_rows
from tests.support.evidence import HOSTS, RESULTS

pytestmark = pytest.mark.chromium

ITEMS = [
    {
        "id": "daily.security_alerts",
        "title": "Security alerts",
        "source": "REQ-COMP-8",
        "status": "pending",
        "checks": {},
        "failing": [],
        "attestation": None,
    }
]


def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(
        render("Daily operations check", {"inventory": "inventories/lab"}, HOSTS, RESULTS, ITEMS)
    )
    dumped = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    # The DOM Chromium built: the summary, every result and host, the pending item.
    assert "Daily operations check" in dom
    assert "Summary: <strong>1 pending</strong>" in dom  # a checklist counts its items
    for result in RESULTS:
        assert result["check"] in dom
    assert "unreachable: &lt;timeout&gt;" in dom and "daily.security_alerts" in dom
    # What a host said stayed text: no script element was made from it.
    assert "<script" not in dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    shot = tmp_path / "report.png"
    taken = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    width, height, rows = png_rows(shot)
    assert (width, height) == (1200, 900)
    # Something was drawn: the rows differ (a blank or failed page is one colour).
    assert len(set(rows)) > 50


def test_the_per_control_sections_render_in_headless_chromium(tmp_path: Path) -> None:
    # A control's row leads to the checks, attestations, hosts and files behind it; a
    # run's absent values read as words.
    catalogs = load_catalogs()
    attested = {"daily.security_alerts": {"iso27001-2022": ["A.5.25"]}}
    run = {"inventory": "inventories/lab", "limit": None, "waivers_sha256": None}
    controls = control_sections(RESULTS, ITEMS, attested, catalogs)
    page = tmp_path / "report.html"
    page.write_text(render("Daily operations check", run, HOSTS, RESULTS, ITEMS, [], controls))
    dumped = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    assert "<h2>Controls: ISO/IEC 27001:2022 Annex A (iso27001-2022)</h2>" in dom
    assert (
        "<tr><td>A.8.5 Secure authentication</td><td>failed</td>"
        "<td>ssh.keys_only (core-01: fail)</td><td></td><td>results.json, facts/core-01.json"
        "</td></tr>"
    ) in dom
    assert (
        "<tr><td>A.5.25 Assessment and decision on information security events</td>"
        "<td>pending</td><td></td><td>daily.security_alerts: pending (no attestation in its "
        "period)</td><td>checklist.json</td></tr>"
    ) in dom
    assert "tls.policy (core-01: waived (waiver of ciso until 2027-01-01))" in dom
    assert "Not judged by this run: 91 controls (A.5.1, A.5.2," in dom
    assert "<th>limit</th><td><code>all hosts</code>" in dom
    assert "<th>waivers_sha256</th><td><code>no waivers</code>" in dom
    assert "None" not in dom
