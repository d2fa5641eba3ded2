"""report.md of a period bundle: compliance.period's report, for a person.

Its first line is the verdict on the evidence: VERIFIED, or NOT VERIFIED with
the problems first - a series without a head, newest runs missing, a bundle
that does not verify - so that nobody reads a clean report of evidence that
is not. It cites only the project's requirement ids and the frameworks'
control ids, and says in words what is absent ("no waivers", "none").

The report is made once, as blocks (headings, paragraphs, tables, lists, the
controls of a framework): `markdown` writes them as report.md and
compliance.period_html as report.html, so both say the same.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from compliance import __version__
from compliance.controls import JUDGEMENT
from compliance.markdown import cell
from compliance.period import (
    BEFORE_KEPT,
    DAY_STATUSES,
    DUE_STATUSES,
    LATE,
    MISSING,
    NOT_VERIFIED,
    NOT_YET_DUE,
    SAMPLING,
    ControlView,
    Episode,
    PeriodReport,
    SeriesRead,
    WaiverUse,
    sample_path,
    when,
)

# --- the report's blocks ---------------------------------------------------------------


@dataclass(frozen=True)
class Heading:
    level: int  # 1 the title, 2 a section, 3 within one
    text: str


@dataclass(frozen=True)
class Text:
    text: str  # a paragraph; `...` is a command as typed


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str]]
    empty: str  # what to say when there is no row
    long: bool = False  # a list an auditor looks things up in, not one read through


@dataclass(frozen=True)
class Bullets:
    items: list[str]
    empty: str = "none"


@dataclass(frozen=True)
class Controls:
    """The controls of one framework, each with its facts (`control_facts`); report.html
    draws their days and the framework's pass rate too."""

    framework: str
    title: str
    views: list[ControlView] = field(default_factory=list)


Block = Heading | Text | Table | Bullets | Controls


def length(span: datetime.timedelta) -> str:
    """A duration in words: 4 d, 1 d 2 h, 8 h 30 min, 0 min."""
    minutes = int(span.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else ""]
    parts.append(f"{minutes} min" if minutes or not (days or hours) else "")
    return " ".join(p for p in parts if p)


def _section(title: str, introduction: str = "") -> list[Block]:
    return [Heading(2, title), *([Text(introduction)] if introduction else [])]


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def _at(text: str) -> str:
    """An ISO time from a record, as the report writes times (as it is if it is not one)."""
    try:
        return when(datetime.datetime.fromisoformat(text))
    except ValueError:
        return text


def markdown(report: PeriodReport) -> str:
    lines = [report.verdict()]
    for block in blocks(report):
        lines += ["", *_markdown(block, report.end)]
    return "\n".join(lines) + "\n"


def _markdown(block: Block, until: datetime.datetime) -> list[str]:
    if isinstance(block, Heading):
        return [f"{'#' * block.level} {block.text}"]
    if isinstance(block, Text):
        return [block.text]
    if isinstance(block, Table):
        if not block.rows:
            return [f"_{block.empty}_"]
        return [
            "| " + " | ".join(block.columns) + " |",
            "|" + " --- |" * len(block.columns),
            *("| " + " | ".join(cell(c) for c in row) + " |" for row in block.rows),
        ]
    if isinstance(block, Bullets):
        return [f"- {item}" for item in block.items] or [f"_{block.empty}_"]
    lines = [f"### {block.title} ({block.framework})"]
    for view in block.views:
        lines += ["", f"#### {view.id} {view.title}", ""]
        lines += [f"- {name}: {text}" for name, text in control_facts(view, until)]
    return lines


def blocks(report: PeriodReport) -> list[Block]:
    """The whole report after its verdict, from its title to the last control."""
    return [
        Heading(1, f"Evidence over the period {report.first} to {report.last}"),
        Text(
            f"Made {when(report.made)} by compliance {__version__} from {report.evidence} "
            f"({len(report.series)} series). Times are UTC; a run is late when it was signed "
            f"more than {length(report.grace)} after its due time (the scheduler's grace). "
            "This report serves REQ-COMP-18 to REQ-COMP-23."
        ),
        *_verification(report),
        *_population(report),
        *_exceptions(report),
        *_attestations(report),
        *_samples(report),
        *_controls(report),
    ]


# --- the evidence read -----------------------------------------------------------------


def _verification(report: PeriodReport) -> list[Block]:
    found = _section("The evidence and its verification (REQ-COMP-18)")
    problems = report.problems
    if problems:
        found += [
            Text(f"The evidence does NOT verify: {len(problems)} problems."),
            Bullets(problems),
        ]
    else:
        found.append(
            Text(
                "Every bundle verifies against the trust anchor, every chain is whole, and "
                "every series head shows the newest runs are all here."
            )
        )
    return [
        *found,
        Table(
            ["series", "bundles", "series head", "removed by retention"],
            [[s.name, str(s.bundles), _head(s), _pruned(s)] for s in report.series],
            "no series",
        ),
        Text("Signing keys, each trusted for its period by the trust anchor:"),
        Table(
            ["series", "key", "bundles", "first signed", "last signed", "trusted"],
            [
                [
                    s.name,
                    f"{k.key_id[:16]}...",
                    str(k.bundles),
                    when(k.first),
                    when(k.last),
                    k.trusted,
                ]
                for s in report.series
                for k in s.keys
            ],
            "no bundle verified",
        ),
    ]


def _head(series: SeriesRead) -> str:
    if series.head is None:
        return "NONE: the newest runs cannot be shown to be here"
    head = str(series.head)
    if series.head_signed is not None:
        head += f" (signed {when(series.head_signed)})"
    if any("series head" in p for p in series.problems):
        return f"{head}: does NOT match (see the problems)"
    return f"{head}: the newest runs are all here"


def _pruned(series: SeriesRead) -> str:
    if not series.pruned_through:
        return "none"
    last = series.pruned_through
    plural = "s" if series.pruned_count != 1 else ""
    return (
        f"{series.pruned_count} bundle{plural}, the last {last.get('id')} "
        f"(signed {when(datetime.datetime.fromisoformat(last['signed_at']))})"
    )


# --- the population --------------------------------------------------------------------


def _population(report: PeriodReport) -> list[Block]:
    found = _section(
        "Population: the runs expected and found (REQ-COMP-18)",
        "Each checklist's runs expected from its schedule against the runs found. A run "
        "belongs to the due time it follows; the first after it is that due time's run, "
        "any other before the next due time an additional run.",
    )
    statuses = [s for s in DUE_STATUSES if s != NOT_YET_DUE]
    rows = []
    for made in report.populations.values():
        counts = made.counts()
        extra = sum(len(d.extra) for d in made.dues)
        rows.append(
            [
                made.checklist,
                made.schedule,
                str(made.expected),
                str(len(made.found)),
                *(str(counts[s]) for s in statuses),
                str(extra),
            ]
        )
    found.append(
        Table(
            ["checklist", "schedule (UTC)", "expected", "found", *statuses, "additional runs"],
            rows,
            "no checklist series in the evidence",
        )
    )
    later = sum(made.counts()[NOT_YET_DUE] for made in report.populations.values())
    if later:
        found.append(Text(f"Not yet due when this report was made: {_runs(later)} (not counted)."))
    if report.unscheduled:
        found.append(
            Text(f"Runs of no checklist (not in the population): {_runs(report.unscheduled)}.")
        )
    populations = list(report.populations.values())
    late = [d for p in populations for d in p.dues if d.status == LATE]
    return [
        *found,
        Heading(3, "Missing runs"),
        Bullets(
            [
                f"{d.checklist}: due {when(d.due)}: no run"
                for p in populations
                for d in p.dues
                if d.status == MISSING
            ]
        ),
        Heading(3, "Late runs"),
        Bullets(
            [
                f"{d.checklist}: due {when(d.due)}, signed {when(d.run.signed_at)}: "
                f"{length(d.late_by or datetime.timedelta())} late (grace "
                f"{length(report.grace)}; bundle {d.run.bundle})"
                + (", after the period's end" if d.run.signed_at >= report.period_end else "")
                for d in late
                if d.run is not None
            ]
        ),
        Heading(3, "Runs that do not verify"),
        Bullets(
            [
                f"{d.checklist}: due {when(d.due)}: bundle {d.unverified.bundle}: "
                f"{d.unverified.problem}"
                for p in populations
                for d in p.dues
                if d.unverified is not None and d.status == NOT_VERIFIED
            ]
        ),
        Heading(3, "Runs before the evidence kept"),
        Bullets(
            [
                f"{p.checklist}: {_runs(len(kept))} due {when(kept[0].due)}"
                + (f" to {when(kept[-1].due)}" if len(kept) > 1 else "")
                + ": removed by retention (the signed record of removed bundles), not missing"
                for p in populations
                if (kept := [d for d in p.dues if d.status == BEFORE_KEPT])
            ]
        ),
        Heading(3, "Additional runs"),
        Bullets(
            [
                f"{d.checklist}: bundle {r.bundle} signed {when(r.signed_at)}, after the run "
                f"due {when(d.due)}"
                for p in populations
                for d in p.dues
                for r in d.extra
            ]
        ),
    ]


# --- exceptions ------------------------------------------------------------------------


def _exceptions(report: PeriodReport) -> list[Block]:
    return [
        *_section(
            "Exceptions: failure episodes (REQ-COMP-20)",
            "Each episode of a check failing on a host (failed, waived or not checked in "
            "consecutive runs): first and last seen, fixed by the first later run in which it "
            "passed, its length from first seen against the check's remediation deadline, "
            "and the waivers in force during it.",
        ),
        Table(
            [
                "check",
                "host",
                "severity",
                "first seen",
                "last seen",
                "fixed",
                "took",
                "deadline",
                "against the deadline",
                "runs",
                "waivers",
            ],
            [_episode_row(e, report.end) for e in report.episodes],
            "no check failed in the period",
        ),
    ]


def _episode_row(episode: Episode, until: datetime.datetime) -> list[str]:
    took = episode.duration(until)
    deadline = datetime.timedelta(hours=episode.deadline.hours)
    if episode.fixed is None:
        fixed = "open at the end of the period"
        against = (
            "open, within so far"
            if took <= deadline
            else f"open, EXCEEDED by {length(took - deadline)}"
        )
    else:
        fixed = f"{when(episode.fixed)} ({episode.fixed_how}, bundle {episode.fixed_bundle})"
        against = "within" if took <= deadline else f"EXCEEDED by {length(took - deadline)}"
    runs = ", ".join(f"{n} {s}" for s, n in sorted(episode.runs.items()))
    return [
        episode.check,
        episode.host,
        episode.severity,
        when(episode.first_seen),
        when(episode.last_seen),
        fixed,
        length(took),
        f"{episode.deadline} ({episode.deadline.basis})",
        against,
        runs,
        "; ".join(_waiver(w) for w in episode.waivers) or "no waivers",
    ]


def _waiver(use: WaiverUse) -> str:
    text = f"approved by {use.approver} until {use.expires} ({use.reason})"
    if use.waived and use.first_waived and use.last_waived:
        text += f": waived {_runs(use.waived)}, {when(use.first_waived)} to {when(use.last_waived)}"
    if use.not_waived_from is not None:
        text += (
            f"; expired during the episode: not waived from {when(use.not_waived_from)} "
            f"({_runs(use.not_waived)})"
        )
    return text


# --- attestations ----------------------------------------------------------------------


def _attestations(report: PeriodReport) -> list[Block]:
    people = sorted({a.by for a in report.attested})
    return [
        *_section(
            "Attestations (REQ-COMP-21)",
            "An attestation counts for the run due in its period (the UTC day, ISO week or "
            "month in which it was made) that recorded it. One that only a later run shows "
            "never turns that run's signed pending result into a pass.",
        ),
        Text(
            f"{len(report.attested)} attestations counted, by "
            + (", ".join(people) if people else "nobody")
            + "."
        ),
        Heading(3, "Pending past their due time"),
        Table(
            ["item", "due", "run", "recorded later (not counted)"],
            [
                [
                    f"{p.item} {p.title}",
                    when(p.due),
                    p.bundle,
                    "; ".join(f"by {a.by}: {a.remark}" for a in p.later) or "nothing",
                ]
                for p in report.pending
            ],
            "no item stayed pending past its due time",
        ),
        Heading(3, "Attested"),
        Table(
            ["item", "by", "made", "counted for the run due", "note", "files shown"],
            [
                [a.item, a.by, _at(a.at), when(a.due), a.note, str(a.files) if a.files else "none"]
                for a in report.attested
            ],
            "nothing was attested in the period",
            long=True,
        ),
    ]


# --- samples ---------------------------------------------------------------------------


def _samples(report: PeriodReport) -> list[Block]:
    found = _section("Samples (REQ-COMP-22)")
    if report.seed is not None:
        source = "given with --seed" if report.seed_given else "drawn at random by the command"
        sizes = ", ".join(f"{n} {name}" for name, n in report.sample_sizes.items())
        found.append(
            Text(
                f"Sampling seed: {report.seed} ({source}); runs drawn: {sizes or 'none'}; "
                f"method: {SAMPLING}. `compliance period ... {report.sample_options()}` picks "
                "the same runs."
            )
        )
    else:
        found.append(Text("The runs due on the dates asked for."))
    found += [
        Text("Each sampled bundle is copied here, verified, under samples/."),
        Table(
            ["checklist", "due", "bundle", "chosen", "copy in this bundle"],
            [
                [s.checklist, when(s.due), s.bundle, s.chosen, sample_path(s)]
                for s in report.samples
            ],
            "no run was sampled",
        ),
    ]
    if report.not_sampled:
        found += [Text("Asked for and not found:"), Bullets(list(report.not_sampled))]
    return found


# --- controls --------------------------------------------------------------------------


def _controls(report: PeriodReport) -> list[Block]:
    return [
        *_section(
            "Controls (REQ-COMP-19)",
            "Each control's status on each day, from the runs whose period holds the day (the "
            "day's daily run, the week's weekly run, the month's monthly run), the worst of "
            f"them: {', '.join(DAY_STATUSES)}. {JUDGEMENT} The share counts the runs due in "
            "the period that judge the control, a missing run or one that does not verify as "
            "not satisfied; runs removed by retention (before the evidence kept) are not "
            "counted.",
        ),
        *(
            Controls(framework, title, [v for v in report.controls if v.framework == framework])
            for framework, title in report.frameworks.items()
        ),
    ]


def covered_by(view: ControlView) -> str:
    if view.not_applicable:
        return f"not applicable: {view.not_applicable}"
    if view.coverage == "gap":
        return "NOT COVERED (a gap)"
    ways = []
    if view.checks:
        ways.append(f"checks {', '.join(view.checks)}")
    if view.attestations:
        ways.append(f"attestations {', '.join(view.attestations)}")
    runs = f"; judged by the {', '.join(view.checklists)} runs" if view.checklists else ""
    return " and ".join(ways) + runs


def share(view: ControlView) -> str:
    if not view.judged:
        return "no run in the period judged it"
    return (
        f"satisfied in {view.satisfied} of {view.judged} runs "
        f"({100 * view.satisfied / view.judged:.1f} %)"
    )


def days(view: ControlView) -> str:
    return "; ".join(
        f"{s.first}{'' if s.first == s.last else f' to {s.last}'} {s.status}" for s in view.timeline
    )


def control_facts(view: ControlView, until: datetime.datetime) -> list[tuple[str, str]]:
    """What the report says of a control: how it is covered, its runs' share, its days
    and its exceptions (each in words)."""
    exceptions = [
        f"{e.check} on {e.host} from {when(e.first_seen)}, "
        + (f"fixed {when(e.fixed)}" if e.fixed else "open")
        + f" ({'within' if e.within_deadline(until) else 'beyond'} its deadline)"
        for e in view.exceptions
    ]
    if view.pending:
        exceptions.append(f"its attestation was pending in {_runs(view.pending)}")
    return [
        ("Covered by", covered_by(view)),
        ("Runs", share(view)),
        ("Days", days(view) or "none"),
        ("Exceptions", "; ".join(exceptions) or "none"),
    ]
