"""report.html of a period bundle: the period report as one self-contained page, and
the bundle's reports (`report_files`).

The page says what report.md says (compliance.period_report's blocks, in the
same order, the verdict first) with the run report's head, style and tables
(compliance.html_report: no script, nothing fetched, a policy that loads
nothing, everything escaped). Its charts are inline SVG drawn here:

- per framework, the pass rate day by day: of the controls the checklists'
  runs judge, the share satisfied on each day (not applicable ones and days
  before the evidence kept are not counted), the days below 100 % marked
  under it and named in its caption;
- per control, its timeline: a cell per day coloured by the day's status,
  consecutive days of one status drawn as one shape, so a year of 150
  controls stays small; each shape's title names its days and status, the
  legend names each colour, and the days are written out beside it: the page
  reads the same without colour.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from html import escape

from compliance.html_report import page_start, table
from compliance.oscal import period_assessment_results
from compliance.period import (
    BEFORE_KEPT,
    DAY,
    DAY_STATUSES,
    FAILED,
    NO_RUN,
    NOT_APPLICABLE,
    NOT_VERIFIED,
    PENDING,
    SATISFIED,
    ControlView,
    PeriodReport,
    Span,
    spans,
)
from compliance.period_report import (
    Block,
    Bullets,
    Controls,
    Heading,
    Table,
    Text,
    blocks,
    control_facts,
    markdown,
)

# A day's status: its colour (the legend names each).
COLOURS = {
    FAILED: "#c62828",
    NOT_VERIFIED: "#6a1b9a",
    NO_RUN: "#37474f",
    PENDING: "#f9a825",
    BEFORE_KEPT: "#b0bec5",
    SATISFIED: "#2e7d32",
    NOT_APPLICABLE: "#e0e0e0",
}

ROW = 14  # a timeline's height, in pixels
WIDEST = 730  # the days' width at most: a year is 2 pixels a day
CHART = 120  # the pass-rate chart's plot height
LEFT = 44  # room for the chart's percentages


def _css_class(status: str) -> str:
    return "st-" + status.replace(" ", "-")


STYLE = (
    """
body { max-width: 96em; }
.verdict { padding: .6em .8em; border: 2px solid; font-weight: bold; }
.verdict.ok { color: #17662b; border-color: #17662b; background: #eef7ef; }
.verdict.bad { color: #a30d0d; border-color: #a30d0d; background: #fbeeee; }
svg text { font: 10px system-ui, sans-serif; fill: #333; }
.legend .swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle;
  border: 1px solid #888; margin: 0 .3em 0 1em; }
.days, .facts { color: #555; font-size: .85em; }
td.timeline div.days { max-width: """
    + str(WIDEST)
    + """px; }
.rate-area { fill: #c8e6c9; } .rate-line { fill: none; stroke: #2e7d32; stroke-width: 1.5; }
.grid { stroke: #ccc; stroke-width: 1; } .dip { fill: #c62828; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: .9em; max-width: 60em; }
"""
    + "".join(f".{_css_class(s)} {{ fill: {c}; background: {c}; }}\n" for s, c in COLOURS.items())
)


def report_files(report: PeriodReport) -> dict[str, bytes]:
    """The period bundle's reports: report.md, report.html and the runs as OSCAL
    assessment results (oscal-assessment-results.json)."""
    oscal = period_assessment_results(report)
    return {
        "report.md": markdown(report).encode(),
        "report.html": render(report).encode(),
        # Compact: a year of runs is some megabytes of it, read by tools.
        "oscal-assessment-results.json": (
            json.dumps(oscal, ensure_ascii=False, separators=(",", ":")) + "\n"
        ).encode(),
    }


def render(report: PeriodReport) -> str:
    found = blocks(report)
    title = next(b.text for b in found if isinstance(b, Heading) and b.level == 1)
    verdict = "ok" if report.verified else "bad"
    # The verdict first, above the title: nobody reads a clean page of evidence that is not.
    *head, heading = page_start(title, STYLE)
    parts = [*head, f'<p class="verdict {verdict}">{escape(report.verdict())}</p>', heading]
    days = [report.first + n * DAY for n in range((report.last - report.first).days + 1)]
    for block in found:
        if not (isinstance(block, Heading) and block.level == 1):
            parts += _html(block, days, report.end)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _text(text: str) -> str:
    """TEXT escaped, each `...` in it as code."""
    pieces = escape(text).split("`")
    return "".join(f"<code>{p}</code>" if n % 2 else p for n, p in enumerate(pieces))


def _html(block: Block, days: list[datetime.date], until: datetime.datetime) -> list[str]:
    if isinstance(block, Heading):
        return [f"<h{block.level}>{escape(block.text)}</h{block.level}>"]
    if isinstance(block, Text):
        return [f"<p>{_text(block.text)}</p>"]
    if isinstance(block, Table):
        rows = table(block.columns, block.rows, block.empty)
        if block.long and block.rows:
            return [f"<details><summary>{len(block.rows)} rows</summary>", *rows, "</details>"]
        return rows
    if isinstance(block, Bullets):
        if not block.items:
            return [f"<p><em>{escape(block.empty)}</em></p>"]
        return ["<ul>", *(f"<li>{escape(item)}</li>" for item in block.items), "</ul>"]
    return _controls(block, days, until)


# --- the controls of a framework ---------------------------------------------------------


def _cell(days: Sequence[datetime.date]) -> int:
    """A day's width in pixels: 2 for a year, up to 16 for a short period."""
    return max(2, min(16, WIDEST // max(len(days), 1)))


def _controls(block: Controls, days: list[datetime.date], until: datetime.datetime) -> list[str]:
    cell = _cell(days)
    slug = escape(block.framework)
    parts = [
        f'<h3 id="{slug}">{escape(block.title)} ({slug})</h3>',
        *_pass_rate(block, days, cell),
        _legend(),
        f'<table class="controls"><thead><tr><th>control</th><th>day by day<br>'
        f"{_axis(days, cell, 0, 14)}</th><th>runs and exceptions</th></tr></thead><tbody>",
    ]
    for view in block.views:
        facts = dict(control_facts(view, until))
        anchor = f"{slug}-{escape(view.id)}"
        parts.append(
            f'<tr id="{anchor}"><td><strong>{escape(view.id)}</strong> {escape(view.title)}'
            f'<div class="facts">Covered by: {escape(facts["Covered by"])}</div></td>'
            f'<td class="timeline">{_timeline(view, days, cell, anchor)}'
            f'<div class="days" id="{anchor}-days">{escape(facts["Days"])}</div></td>'
            f"<td>{escape(facts['Runs'])}"
            f'<div class="facts">Exceptions: {escape(facts["Exceptions"])}</div></td></tr>'
        )
    parts.append("</tbody></table>")
    return parts


def _legend() -> str:
    entries = "".join(
        f'<span class="swatch {_css_class(s)}"></span>{escape(s)}' for s in DAY_STATUSES
    )
    return f'<p class="legend">Each day a cell, coloured by its status:{entries}.</p>'


def _span_title(span: Span) -> str:
    days = str(span.first) if span.first == span.last else f"{span.first} to {span.last}"
    return f"{days}: {span.status}"


def _timeline(view: ControlView, days: list[datetime.date], cell: int, anchor: str) -> str:
    width = len(days) * cell
    shapes = []
    for span in view.timeline:
        x = (span.first - days[0]).days * cell
        w = ((span.last - span.first).days + 1) * cell
        shapes.append(
            f'<rect class="{_css_class(span.status)}" x="{x}" width="{w}" height="{ROW}">'
            f"<title>{escape(_span_title(span))}</title></rect>"
        )
    if cell >= 6:  # a line between days, where a day is wide enough to show one
        shapes += [
            f'<line class="grid" x1="{x}" x2="{x}" y1="0" y2="{ROW}"/>'
            for x in range(cell, width, cell)
        ]
    return (
        f'<svg width="{width}" height="{ROW}" viewBox="0 0 {width} {ROW}" role="img" '
        f'aria-describedby="{anchor}-days"><title>{escape(view.id)} day by day</title>'
        + "".join(shapes)
        + "</svg>"
    )


def _ticks(days: Sequence[datetime.date]) -> list[tuple[int, str]]:
    """The days an axis names: the first, then each month's first day (each Monday in a
    period of two months or less)."""
    monthly = len(days) > 62
    found = []
    for index, day in enumerate(days):
        if index == 0:
            found.append((index, day.isoformat()))
        elif monthly and day.day == 1:
            found.append((index, day.strftime("%b") if day.month != 1 else str(day.year)))
        elif not monthly and day.weekday() == 0:
            found.append((index, day.strftime("%d %b")))
    if monthly and len(found) > 1 and found[1][0] * _cell(days) < 56:
        del found[1]  # too close to the first day's date to be read
    return found


def _axis(days: Sequence[datetime.date], cell: int, left: int, height: int) -> str:
    width = left + len(days) * cell + 40
    labels = "".join(
        f'<line class="grid" x1="{left + i * cell}" x2="{left + i * cell}" y1="0" y2="4"/>'
        f'<text x="{left + i * cell + 2}" y="{height - 2}">{escape(label)}</text>'
        for i, label in _ticks(days)
    )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-hidden="true">{labels}</svg>'
    )


# --- the pass rate of a framework ----------------------------------------------------------


def daily_rates(views: Sequence[ControlView], days: Sequence[datetime.date]) -> list[float | None]:
    """Each day's share of the controls judged that day that were satisfied: of the
    controls the checklists' runs judge, not counting those not applicable that day or
    whose runs were before the evidence kept. None: none was judged that day."""
    satisfied, judged = [0] * len(days), [0] * len(days)
    for view in views:
        if not view.checklists:
            continue
        for span in view.timeline:
            if span.status in (NOT_APPLICABLE, BEFORE_KEPT):
                continue
            for index in range((span.first - days[0]).days, (span.last - days[0]).days + 1):
                judged[index] += 1
                satisfied[index] += span.status == SATISFIED
    return [s / j if j else None for s, j in zip(satisfied, judged, strict=True)]


def _percent(rate: float) -> str:
    return f"{100 * rate:.1f} %"


def _pass_rate(block: Controls, days: list[datetime.date], cell: int) -> list[str]:
    rates = daily_rates(block.views, days)
    known = [r for r in rates if r is not None]
    if not known:
        nothing = f"No control of {block.framework} was judged in the period."
        return [f"<p><em>{escape(nothing)}</em></p>"]
    # The scale starts low enough to show the lowest day, at a tenth: a dip of one
    # control in sixty must be seen, and the axis says where it starts.
    low = min(0.9, int(min(known) * 10) / 10)
    top, width = 6, LEFT + len(days) * cell

    def y(rate: float) -> float:
        return round(top + (1 - (rate - low) / (1 - low)) * CHART, 1)

    area, line = [], []
    for index, rate in enumerate(rates):
        if rate is None:
            continue
        x = LEFT + index * cell
        starts = index == 0 or rates[index - 1] is None
        ends = index == len(rates) - 1 or rates[index + 1] is None
        if starts:
            area.append(f"M{x},{top + CHART}")
            line.append(f"M{x},{y(rate)}")
        area.append(f"L{x},{y(rate)}L{x + cell},{y(rate)}")
        line.append(f"L{x},{y(rate)}L{x + cell},{y(rate)}")
        if ends:
            area.append(f"L{x + cell},{top + CHART}Z")
    grid = "".join(
        f'<line class="grid" x1="{LEFT}" x2="{width}" y1="{y(r)}" y2="{y(r)}"/>'
        f'<text x="2" y="{y(r) + 3}">{round(100 * r)} %</text>'
        for r in (low, (low + 1) / 2, 1.0)
    )
    below = [
        s
        for s in spans(days, ["below" if r is not None and r < 1 else "" for r in rates])
        if s.status
    ]
    dips = "".join(
        f'<rect class="dip" x="{LEFT + (s.first - days[0]).days * cell}" y="{top + CHART + 2}" '
        f'width="{((s.last - s.first).days + 1) * cell}" height="5">'
        f"<title>{escape(_dip(s, rates, days))}</title></rect>"
        for s in below
    )
    height = top + CHART + 24
    svg = (
        f'<svg width="{width + 40}" height="{height}" viewBox="0 0 {width + 40} {height}" '
        f'role="img" aria-describedby="rate-{escape(block.framework)}">'
        f"<title>{escape(block.title)}: the share of its controls satisfied each day</title>"
        f'{grid}<path class="rate-area" d="{"".join(area)}"/>'
        f'<path class="rate-line" d="{"".join(line)}"/>{dips}'
        f'<g transform="translate(0,{top + CHART + 8})">{_axis(days, cell, LEFT, 16)}</g></svg>'
    )
    full = sum(r == 1 for r in known)
    caption = (
        f"Pass rate of {block.title} ({block.framework}): each day, the share of the controls "
        "judged by the checklists' runs that were satisfied (not applicable controls and days "
        f"before the evidence kept are not counted; the scale starts at {_percent(low)}). "
        f"100 % on {full} of {len(known)} days"
        + (f"; lowest {_percent(min(known))}" if full < len(known) else "")
        + ". Below 100 % (marked under the chart): "
        + ("; ".join(_dip(s, rates, days) for s in below) or "no day")
        + "."
    )
    return [
        "<figure>",
        svg,
        f'<figcaption id="rate-{escape(block.framework)}">{escape(caption)}</figcaption>',
        "</figure>",
    ]


def _dip(span: Span, rates: Sequence[float | None], days: Sequence[datetime.date]) -> str:
    found = [
        r
        for r in rates[(span.first - days[0]).days : (span.last - days[0]).days + 1]
        if r is not None
    ]
    when = str(span.first) if span.first == span.last else f"{span.first} to {span.last}"
    lowest = f"lowest {_percent(min(found))}" if len(found) > 1 else _percent(found[0])
    return f"{when} ({lowest})"
