"""report.html: one self-contained page an auditor opens without any tool.

No script, no external style sheet or font, nothing fetched: the page is
the evidence itself, and its Content-Security-Policy lets it load nothing but
its own inline style. Everything that came from a host or a person is
escaped, so a fact or a note can never become markup. Each check result
shows, under the check's name, its rationale: why the check exists and the
requirements it verifies. After the results, a section per framework leads
from each control the run judged to the checks, attestations, hosts and
evidence files behind it. A value the run does not have reads as words ("all
hosts", "no waivers"), never as None.

The period report's page (compliance.period_html) is made with the same head,
style and tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from compliance.checklist_run import ORDER
from compliance.report_sections import Section, run_value

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #ccc; padding: .35em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.status { font-weight: bold; white-space: nowrap; }
.pass { color: #17662b; } .fail, .error { color: #a30d0d; }
.pending, .waived { color: #8a5a00; }
.not_applicable { color: #555; }
code { font-size: .92em; }
.rationale { color: #555; font-size: .92em; }
"""


# Nothing is loaded from anywhere: no script, image, font or frame; the style inline.
CSP = "default-src 'none'; style-src 'unsafe-inline'"


def page_start(title: str, style: str = "") -> list[str]:
    """The page's head (its policy, the style, STYLE added) and its title."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>{escape(title)}</title><style>{STYLE}{style}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str) -> list[str]:
    """A table of text cells (escaped), or EMPTY in words when there is no row."""
    listed = list(rows)
    if not listed:
        return [f"<p><em>{escape(empty)}</em></p>"]
    header = "".join(f"<th>{escape(c)}</th>" for c in columns)
    return [
        f"<table><thead><tr>{header}</tr></thead><tbody>",
        *("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in listed),
        "</tbody></table>",
    ]


def sections_html(sections: Iterable[Section]) -> list[str]:
    parts = []
    for section in sections:
        parts.append(f"<h2>{escape(section.title)}</h2>")
        parts += table(section.columns, section.rows, section.empty)
        if section.note:
            parts.append(f"<p>{escape(section.note)}</p>")
    return parts


def _status(status: str) -> str:
    return f'<span class="status {escape(status)}">{escape(status)}</span>'


def render(
    title: str,
    run: dict[str, Any],
    hosts: list[dict[str, Any]],
    results: list[dict[str, Any]],
    items: list[dict[str, Any]] | None = None,
    sections: list[Section] | None = None,
    controls: list[Section] | None = None,
) -> str:
    """The page for a check run (RESULTS) or a checklist run (ITEMS and their RESULTS);
    CONTROLS: the per-control sections (report_sections.control_sections)."""
    counted = (
        Counter(i["status"] for i in items) if items else Counter(r["status"] for r in results)
    )
    summary = ", ".join(f"{counted[s]} {s}" for s in ORDER if counted[s]) or "nothing ran"
    parts = [
        *page_start(title),
        f"<p>Summary: <strong>{escape(summary)}</strong>.</p>",
        "<table><tbody>",
        *(
            f"<tr><th>{escape(k)}</th><td><code>{escape(run_value(k, v))}</code></td></tr>"
            for k, v in run.items()
            if not isinstance(v, dict | list)
        ),
        "</tbody></table>",
        *sections_html(sections or []),
    ]
    if items:
        header = "".join(
            f"<th>{h}</th>" for h in ("item", "status", "checks", "attestation", "source")
        )
        parts += ["<h2>Checklist items</h2>", f"<table><thead><tr>{header}</tr></thead><tbody>"]
        for item in items:
            checks = "<br>".join(
                f"{escape(c)}: {escape(', '.join(f'{n} {s}' for s, n in sorted(k.items())))}"
                for c, k in item["checks"].items()
            )
            attestation = item.get("attestation")
            attested = (
                f"{escape(attestation['by'])} (signed, key "
                f"{escape(str(attestation.get('signed_by'))[:16])}...), "
                f"{escape(attestation['at'])}: {escape(attestation['note'])}"
                if attestation
                else ""
            )
            attested += "".join(
                f"<br>not counted: {escape(why)}" for why in item.get("not_counted", [])
            )
            parts.append(
                f"<tr><td>{escape(item['id'])}<br>{escape(item['title'])}</td>"
                f"<td>{_status(item['status'])}</td><td>{checks}</td><td>{attested}</td>"
                f"<td>{escape(item['source'])}</td></tr>"
            )
        parts.append("</tbody></table>")
    parts += [
        "<h2>Hosts</h2>",
        "<table><thead><tr><th>host</th><th>groups</th><th>gathered</th></tr></thead><tbody>",
    ]
    for host in hosts:
        gathered = escape(host["error"]) if host.get("error") else f"{host.get('seconds')} s"
        parts.append(
            f"<tr><td>{escape(host['host'])}</td>"
            f"<td>{escape(', '.join(host.get('groups', [])))}</td>"
            f"<td>{gathered}</td></tr>"
        )
    parts += [
        "</tbody></table>",
        "<h2>Check results</h2>",
        "<table><thead><tr><th>host</th><th>check</th><th>status</th><th>severity</th>"
        "<th>controls</th><th>what was found</th></tr></thead><tbody>",
    ]
    ranked = sorted(results, key=lambda r: (ORDER.index(r["status"]), r["host"], r["check"]))
    for r in ranked:
        mapped = "; ".join(f"{f}: {', '.join(ids)}" for f, ids in r["controls"].items())
        waiver = ""
        if r.get("waiver"):
            w = r["waiver"]
            expired = ", expired" if w.get("expired") else ""
            waiver = (
                f"<br>waiver: {escape(w['reason'])} ({escape(w['approver'])}, until "
                f"{escape(w['expires'])}{expired})"
            )
        why = (
            f'<br><span class="rationale">{escape(r["rationale"])}</span>'
            if r.get("rationale")
            else ""
        )
        parts.append(
            f"<tr><td>{escape(r['host'])}</td><td>{escape(r['check'])}{why}</td>"
            f"<td>{_status(r['status'])}</td><td>{escape(r['severity'])}</td>"
            f"<td>{escape(mapped)}</td><td>{escape(r['detail'])}{waiver}</td></tr>"
        )
    parts += ["</tbody></table>", *sections_html(controls or []), "</body></html>"]
    return "\n".join(parts) + "\n"
