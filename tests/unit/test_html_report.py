"""report.html: self-contained, everything from hosts and people escaped."""

from __future__ import annotations

from html.parser import HTMLParser

from compliance.html_report import render
from tests.support.evidence import HOSTS, RESULTS


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def test_a_check_report_escapes_what_hosts_said_and_fetches_nothing() -> None:
    page = render(
        "compliance check", {"inventory": "inventories/lab", "x": {"nested": 1}}, HOSTS, RESULTS
    )
    parser = Tags()
    parser.feed(page)
    assert "script" not in parser.tags and "b" not in parser.tags
    assert parser.links == []  # nothing external
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "unreachable: &lt;timeout&gt;" in page
    assert "Summary: <strong>1 fail, 1 waived, 1 pass</strong>" in page
    # Failures first.
    assert page.index("ssh.keys_only") < page.index("tls.policy") < page.index("time.synchronized")
    assert "waiver: migration &lt;b&gt; (ciso, until 2027-01-01)" in page


def test_a_checklist_report_shows_items_and_attestations() -> None:
    items = [
        {
            "id": "daily.security_alerts",
            "title": "Security alerts",
            "source": "REQ-COMP-8",
            "status": "pass",
            "checks": {},
            "failing": [],
            "attestation": {
                "by": "alice <a@x>",
                "at": "2026-11-26T09:00:00+00:00",
                "note": "quiet",
                "files": [],
                "signed_by": "ab" * 32,
            },
        },
        {
            "id": "daily.performance_metrics",
            "title": "Performance",
            "source": "REQ-COMP-8",
            "status": "pending",
            "checks": {},
            "failing": [],
            "attestation": None,
            "not_counted": ["x.json: by <mallory>, who is not in the attesters file"],
        },
    ]
    page = render("Daily operations check", {}, HOSTS[:1], RESULTS, items)
    assert "Summary: <strong>1 pending, 1 pass</strong>" in page
    assert (
        f"alice &lt;a@x&gt; (signed, key {'ab' * 8}...), 2026-11-26T09:00:00+00:00: quiet" in page
    )
    assert "not counted: x.json: by &lt;mallory&gt;, who is not in the attesters file" in page
    assert '<span class="status pending">pending</span>' in page


def test_each_check_result_says_why_the_check_exists() -> None:
    results = [
        {
            **RESULTS[0],
            "rationale": "REQ-HARD-3 - passwords <over the network> can be guessed.",
            "requirements": ["REQ-HARD-3"],
        },
        *RESULTS[1:],  # as earlier versions made them: no rationale, and none is shown
    ]
    page = render("compliance check", {}, HOSTS, results)
    assert (
        '<td>ssh.keys_only<br><span class="rationale">REQ-HARD-3 - passwords '
        "&lt;over the network&gt; can be guessed.</span></td>" in page
    )
    assert "<td>tls.policy</td>" in page and page.count('class="rationale"') == 1


def test_the_page_loads_nothing_and_says_absent_values_in_words() -> None:
    run = {"inventory": "inventories/lab", "limit": None, "waivers_sha256": None}
    page = render("compliance check", run, HOSTS, RESULTS)
    assert (
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
    ) in page
    assert "<th>limit</th><td><code>all hosts</code></td>" in page
    assert "<th>waivers_sha256</th><td><code>no waivers</code></td>" in page
    assert "None" not in page
