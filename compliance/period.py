"""Evidence over an audit period: what an auditor of a SOC 2 Type II or ISO 27001
surveillance audit reads (REQ-COMP-18 to REQ-COMP-23).

`compliance period EVIDENCE_DIR --from DATE --to DATE` reads the checklists'
evidence series (the scheduler's EVIDENCE_ROOT/daily, /weekly, /monthly, or
one series), verifies each with the trust anchor, its chain and its series
head exactly as `compliance verify` does, and reports from the bundles that
verify:

- the population: each checklist's runs expected in the period from its own
  schedule (the `schedule` of its YAML, in UTC) against the runs found. A run
  belongs to the due time it follows (up to the next due time): the first one
  there is that due time's run, later than the scheduler's grace is late, and
  any further one is an additional run. A due time with no run is missing;
  one at or before the last bundle that retention removed (the signed
  PRUNED.json) is "before evidence kept"; one whose bundle does not verify is
  "not verified"; one whose grace had not passed when the report was made is
  "not yet due" (its run may still come in time). A run due in
  the period but made after its end still counts for its due time (late);
- the exceptions: each failure episode of a check on a host (consecutive runs
  in which it failed, was waived or could not be checked), first and last
  seen, fixed by the first later run in which it passed (or open), its length
  against the check's remediation time (compliance.checks), and the waivers
  in force during it - one that expired during the episode is said so, with
  the runs that were no longer waived;
- the attestations: who attested which item when, and the run that counted
  it (the run due in the attestation's period - the UTC day, ISO week or month
  in which it was made - that recorded it); an item pending in the run due for
  it stayed pending past its due time, whatever a later run in the same period
  shows - a signed pending result is never overridden;
- per control of each framework: how it is covered (compliance.coverage), its
  status on each day (from the runs whose period holds the day), the share of
  its runs in which it was satisfied, and its exceptions;
- samples: runs picked at random with a recorded seed (reproducible: the same
  seed picks the same runs) or on given dates, copied into the period bundle.

The functions over runs are pure: `read_series` and `period_report` read and
verify the evidence, `write_period_bundle` writes the signed period bundle,
compliance.period_report renders its Markdown, compliance.period_html its page
with the charts, and compliance.oscal the runs as OSCAL assessment results.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime
import hashlib
import json
import random
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compliance import __version__
from compliance.attestations import period_of
from compliance.catalog import Catalog
from compliance.checklists import NAMES, Checklist
from compliance.checks import SEVERITIES, Check, RemediationTime, remediation_time
from compliance.controls import (
    FAILED,
    FAILING,
    NOT_APPLICABLE,
    PENDING,
    SATISFIED,
    controls_in_run,
)
from compliance.coverage import ControlCoverage
from compliance.errors import ComplianceError
from compliance.evidence import (
    BUNDLE_TIME,
    PRUNED,
    EvidenceError,
    SigningKey,
    TrustAnchor,
    Verification,
    bundle_dirs,
    check_head,
    default_head,
    pruned_record,
    read_head,
    verify_bundles,
    write_signed_bundle,
)
from compliance.schedule import GRACE

PERIOD_FORMAT = "securecore-period/1"
DAY = datetime.timedelta(days=1)

# What a due time's run was.
ON_TIME, LATE, MISSING = "on time", "late", "missing"
BEFORE_KEPT, NOT_VERIFIED, NOT_YET_DUE = "before evidence kept", "not verified", "not yet due"
DUE_STATUSES = (ON_TIME, LATE, MISSING, NOT_VERIFIED, BEFORE_KEPT, NOT_YET_DUE)

# A control on a day, the worst first: what decides a day that several runs cover. A
# run's own judgement of it (failed, pending, satisfied, not applicable) is
# compliance.controls'.
NO_RUN = "no run"
DAY_STATUSES = (FAILED, NOT_VERIFIED, NO_RUN, PENDING, BEFORE_KEPT, SATISFIED, NOT_APPLICABLE)
DEFAULT_SAMPLE = {"daily": 25, "weekly": 5, "monthly": 2}  # per checklist, by frequency


class PeriodError(ComplianceError):
    """The period cannot be reported as asked (bad dates, no evidence, a schedule this
    report cannot read)."""


# --- schedules -------------------------------------------------------------------------

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
CALENDAR = re.compile(
    r"(?:(?P<weekdays>[A-Z][a-z]{2}(?:,[A-Z][a-z]{2})*)\s+)?"
    r"\*-\*-(?P<day>\*|[0-9]{1,2})\s+"
    r"(?P<hour>[0-9]{1,2}):(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2}))?"
    r"\s+UTC"
)


@dataclass(frozen=True)
class Schedule:
    """A checklist's schedule: the systemd OnCalendar forms its YAML uses, in UTC."""

    expression: str
    weekdays: frozenset[int] | None  # Monday 0; None: every day
    day: int | None  # of the month; None: every day
    at: datetime.time

    def runs_on(self, date: datetime.date) -> bool:
        return (self.weekdays is None or date.weekday() in self.weekdays) and (
            self.day is None or date.day == self.day
        )

    def due_times(
        self, start: datetime.datetime, end: datetime.datetime
    ) -> list[datetime.datetime]:
        """Every due time in [START, END)."""
        found = []
        date = start.date()
        while date <= end.date():
            if self.runs_on(date):
                moment = datetime.datetime.combine(date, self.at, datetime.UTC)
                if start <= moment < end:
                    found.append(moment)
            date += DAY
        return found


def parse_schedule(expression: str) -> Schedule:
    """EXPRESSION as the checklists write it: `[Mon,...] *-*-DAY HH:MM[:SS] UTC`."""
    match = CALENDAR.fullmatch(expression.strip())
    if match is None:
        raise PeriodError(
            f"schedule {expression!r}: the period report reads `[Mon,...] *-*-DAY HH:MM[:SS] UTC`"
            " (a schedule without its zone runs in each host's local time, which evidence"
            " cannot place)"
        )
    weekdays = None
    if match["weekdays"]:
        unknown = [d for d in match["weekdays"].split(",") if d not in WEEKDAYS]
        if unknown:
            raise PeriodError(f"schedule {expression!r}: no weekday {', '.join(unknown)}")
        weekdays = frozenset(WEEKDAYS.index(d) for d in match["weekdays"].split(","))
    try:
        at = datetime.time(int(match["hour"]), int(match["minute"]), int(match["second"] or 0))
    except ValueError as error:
        raise PeriodError(f"schedule {expression!r}: {error}") from error
    day = None if match["day"] == "*" else int(match["day"])
    if day is not None and not 1 <= day <= 31:
        raise PeriodError(f"schedule {expression!r}: no day {day} in a month")
    return Schedule(expression, weekdays, day, at)


# --- runs and the population -------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A verified bundle of a checklist run, as the period reads it."""

    series: str
    bundle: str
    checklist: str  # run.json's kind
    signed_at: datetime.datetime  # from the signed manifest
    results: tuple[dict[str, Any], ...] = ()
    items: tuple[dict[str, Any], ...] = ()
    manifest_sha256: str = ""  # of the signed manifest the run was read under
    hosts: tuple[dict[str, Any], ...] = ()  # as results.json lists them
    started: str = ""  # run.json's start time


@dataclass(frozen=True)
class Unverified:
    """A bundle that did not verify: where it stands (its id's time) and why."""

    series: str
    bundle: str
    checklist: str
    at: datetime.datetime  # from its id: unsigned, used only to place it
    problem: str


@dataclass
class Due:
    checklist: str
    due: datetime.datetime
    status: str
    run: Run | None = None
    late_by: datetime.timedelta | None = None
    extra: list[Run] = field(default_factory=list)  # further runs in its window
    unverified: Unverified | None = None


@dataclass
class Population:
    checklist: str
    schedule: str
    grace: datetime.timedelta
    dues: list[Due]  # the due times in the period
    earlier: Due | None = None  # the one before it, whose period may reach into it

    def counts(self) -> Counter[str]:
        return Counter(d.status for d in self.dues)

    @property
    def expected(self) -> int:
        return sum(d.status != NOT_YET_DUE for d in self.dues)

    @property
    def found(self) -> list[Due]:
        return [d for d in self.dues if d.run is not None]

    def by_period(self) -> dict[str, Due]:
        """The period (day, ISO week, month) -> its due time, for the timeline."""
        dues = ([self.earlier] if self.earlier else []) + self.dues
        return {period_of(self.checklist, d.due): d for d in dues}


def population(
    checklist: str,
    schedule: Schedule,
    runs: Iterable[Run],
    start: datetime.datetime,
    end: datetime.datetime,
    now: datetime.datetime,
    grace: datetime.timedelta = GRACE,
    kept_through: datetime.datetime | None = None,
    unverified: Iterable[Unverified] = (),
) -> Population:
    """CHECKLIST's due times in [START, END) against its RUNS (and bundles that did not
    verify). KEPT_THROUGH: the signed time of the last bundle retention removed."""
    # Due times from two months before to two after (a schedule on the 31st skips
    # months): each window ends at the next one.
    times = schedule.due_times(start - 63 * DAY, end + 63 * DAY)
    windows: list[list[tuple[datetime.datetime, Run | Unverified]]] = [[] for _ in times]
    placed: list[tuple[datetime.datetime, Run | Unverified]] = [
        *((r.signed_at, r) for r in runs if r.checklist == checklist),
        *((u.at, u) for u in unverified if u.checklist == checklist),
    ]
    for moment, entry in sorted(placed, key=lambda p: p[0]):
        index = bisect.bisect_right(times, moment) - 1
        if index >= 0:
            windows[index].append((moment, entry))
    made = Population(checklist, schedule.expression, grace, [])
    for due, window in zip(times, windows, strict=True):
        if due >= end:
            break
        judged_due = _due(checklist, due, window, now, grace, kept_through)
        if due >= start:
            made.dues.append(judged_due)
        else:
            made.earlier = judged_due
    return made


def _due(
    checklist: str,
    due: datetime.datetime,
    window: list[tuple[datetime.datetime, Run | Unverified]],
    now: datetime.datetime,
    grace: datetime.timedelta,
    kept_through: datetime.datetime | None,
) -> Due:
    if not window:
        # A run may still come within its grace (a report made at 10:00 on the day of a
        # 09:00 run): not missing, and not yet judged.
        if due + grace > now:
            return Due(checklist, due, NOT_YET_DUE)
        if kept_through is not None and due <= kept_through:
            return Due(checklist, due, BEFORE_KEPT)
        return Due(checklist, due, MISSING)
    (moment, first), rest = window[0], window[1:]
    extra = [r for _, r in rest if isinstance(r, Run)]
    if isinstance(first, Unverified):
        return Due(checklist, due, NOT_VERIFIED, extra=extra, unverified=first)
    late = moment - due
    status = LATE if late > grace else ON_TIME
    return Due(checklist, due, status, first, late if status == LATE else None, extra)


# --- controls in a run -----------------------------------------------------------------


def run_controls(
    run: Run, attested: Mapping[str, Mapping[str, Sequence[str]]]
) -> dict[tuple[str, str], str]:
    """(framework, control) -> its status in RUN, as compliance.controls judges it: from
    its check results and its items' attestations (ATTESTED: item -> the controls the
    checklist says its attestation supports)."""
    return {
        key: control.status
        for key, control in controls_in_run(run.results, run.items, attested).items()
    }


# --- exceptions ------------------------------------------------------------------------


@dataclass
class WaiverUse:
    approver: str
    reason: str
    expires: str  # a date
    waived: int = 0  # runs of the episode it waived
    first_waived: datetime.datetime | None = None
    last_waived: datetime.datetime | None = None
    not_waived_from: datetime.datetime | None = None  # the first failure after it expired
    not_waived: int = 0  # failing runs after it expired

    @property
    def expired_during(self) -> bool:
        return self.not_waived_from is not None


@dataclass
class Episode:
    check: str
    host: str
    severity: str
    first_seen: datetime.datetime
    last_seen: datetime.datetime
    first_bundle: str
    last_bundle: str
    deadline: RemediationTime
    fixed: datetime.datetime | None = None
    fixed_bundle: str | None = None
    fixed_how: str = ""  # "passed", "no longer applies"
    runs: Counter[str] = field(default_factory=Counter)  # fail / waived / error
    waivers: list[WaiverUse] = field(default_factory=list)
    detail: str = ""  # the first failure's detail
    controls: dict[str, list[str]] = field(default_factory=dict)

    def duration(self, until: datetime.datetime) -> datetime.timedelta:
        """From first seen to the fix, or to UNTIL while it is open."""
        return (self.fixed or until) - self.first_seen

    def within_deadline(self, until: datetime.datetime) -> bool:
        return self.duration(until) <= datetime.timedelta(hours=self.deadline.hours)


def episodes(
    runs: Iterable[Run],
    checks: Mapping[str, Check],
    start: datetime.datetime,
    end: datetime.datetime,
) -> list[Episode]:
    """Each failure episode of a check on a host that was failing at some time in
    [START, END): consecutive runs (of any checklist) in which its result was a failure,
    a waived failure or an error; fixed by the first later run in which it passed or no
    longer applied."""
    observed: dict[tuple[str, str], list[tuple[Run, dict[str, Any]]]] = {}
    for run in sorted(runs, key=lambda r: r.signed_at):
        for result in run.results:
            observed.setdefault((result["check"], result["host"]), []).append((run, result))
    found = []
    for (check, host), seen in sorted(observed.items()):
        current: Episode | None = None
        for run, result in seen:
            if result["status"] in FAILING:
                if current is None:
                    current = _opened(check, host, run, result, checks)
                    found.append(current)
                _observe(current, run, result)
            elif current is not None:
                current.fixed, current.fixed_bundle = run.signed_at, run.bundle
                current.fixed_how = "passed" if result["status"] == "pass" else "no longer applies"
                current = None
    overlapping = [e for e in found if e.first_seen < end and (e.fixed is None or e.fixed > start)]
    return sorted(overlapping, key=lambda e: (e.first_seen, e.check, e.host))


def _recorded_deadline(recorded: object) -> RemediationTime | None:
    if not isinstance(recorded, dict):
        return None
    hours, basis = recorded.get("hours"), recorded.get("basis")
    if isinstance(hours, int) and not isinstance(hours, bool) and hours > 0 and basis:
        return RemediationTime(hours, str(basis))
    return None


def _opened(
    check: str, host: str, run: Run, result: dict[str, Any], checks: Mapping[str, Check]
) -> Episode:
    # The deadline its first failing run recorded (signed): the one in force then, not
    # one a later edit of the check gave it. Runs from before runs recorded it: the
    # deadline of the severity they recorded, with the check's own time if it has one.
    known = checks.get(check)
    recorded = result.get("severity")
    severity = recorded if recorded in SEVERITIES else (known.severity if known else "medium")
    deadline = _recorded_deadline(result.get("remediation")) or remediation_time(
        severity, known.remediate_within if known else None
    )
    return Episode(
        check,
        host,
        severity,
        run.signed_at,
        run.signed_at,
        run.bundle,
        run.bundle,
        deadline,
        detail=str(result.get("detail", "")),
        controls={f: list(ids) for f, ids in (result.get("controls") or {}).items()},
    )


def _observe(episode: Episode, run: Run, result: dict[str, Any]) -> None:
    episode.last_seen, episode.last_bundle = run.signed_at, run.bundle
    episode.runs[result["status"]] += 1
    waiver = result.get("waiver")
    if not waiver:
        return
    key = (str(waiver.get("approver")), str(waiver.get("reason")), str(waiver.get("expires")))
    use = next(
        (w for w in episode.waivers if (w.approver, w.reason, w.expires) == key), None
    ) or WaiverUse(*key)
    if use not in episode.waivers:
        episode.waivers.append(use)
    if result["status"] == "waived":
        use.waived += 1
        use.first_waived = use.first_waived or run.signed_at
        use.last_waived = run.signed_at
    elif waiver.get("expired"):
        use.not_waived += 1
        use.not_waived_from = use.not_waived_from or run.signed_at


# --- attestations ----------------------------------------------------------------------


@dataclass
class Attested:
    checklist: str
    item: str
    by: str
    at: str
    note: str
    signed_by: str
    files: int
    due: datetime.datetime  # of the run that counted it, or whose window it came in
    bundle: str
    counted: bool = True
    remark: str = ""


@dataclass
class Pending:
    checklist: str
    item: str
    title: str
    due: datetime.datetime
    bundle: str
    later: list[Attested] = field(default_factory=list)  # recorded after, in its window


def attestations(
    populations: Iterable[Population], attestable: set[str]
) -> tuple[list[Attested], list[Pending]]:
    """Who attested which item when, counted by the run due in its period that recorded
    it, and the items that run found pending. An attestation that only a later run of the
    same period shows does not change the due run's signed result: it is listed with
    that run's pending item, not counted."""
    counted: list[Attested] = []
    pending: list[Pending] = []
    for made in populations:
        for due in made.dues:
            if due.run is None:
                continue
            seen = set()
            waiting: dict[str, Pending] = {}
            for item in due.run.items:
                if item["id"] not in attestable:
                    continue
                if item.get("attestation"):
                    record = _attested(due, due.run, item)
                    counted.append(record)
                    seen.add((record.item, record.by, record.at))
                else:
                    waiting[item["id"]] = Pending(
                        made.checklist, item["id"], item.get("title", ""), due.due, due.run.bundle
                    )
            pending += waiting.values()
            for run in due.extra:
                for item in run.items:
                    if item["id"] not in waiting or not item.get("attestation"):
                        continue
                    record = _attested(due, run, item)
                    if (record.item, record.by, record.at) in seen:
                        continue
                    seen.add((record.item, record.by, record.at))
                    record.counted = False
                    record.remark = _late_remark(record, due.run)
                    waiting[item["id"]].later.append(record)
    return counted, pending


def _attested(due: Due, run: Run, item: dict[str, Any]) -> Attested:
    found = item["attestation"]
    return Attested(
        due.checklist,
        item["id"],
        str(found.get("by", "")),
        str(found.get("at", "")),
        str(found.get("note", "")),
        str(found.get("signed_by", "")),
        len(found.get("files") or []),
        due.due,
        run.bundle,
    )


def _late_remark(record: Attested, pending_run: Run) -> str:
    found_pending = when(pending_run.signed_at)
    try:
        at: datetime.datetime | None = datetime.datetime.fromisoformat(record.at)
    except ValueError:
        at = None
    dated = when(at) if at else record.at
    if at is not None and at <= pending_run.signed_at:
        return (
            f"dated {dated}, before the run signed {found_pending} found the item pending, "
            f"but recorded only in the later run {record.bundle}: backdated, not counted (a "
            "signed pending result stands)"
        )
    return (
        f"made {dated}, after the run signed {found_pending} found the item pending: late, "
        "not counted for that run"
    )


def when(moment: datetime.datetime) -> str:
    """A time as the period report writes it: to the minute, in UTC."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- per control -----------------------------------------------------------------------


@dataclass
class Span:
    first: datetime.date
    last: datetime.date
    status: str


@dataclass
class ControlView:
    framework: str
    id: str
    title: str
    coverage: str  # automated, attested, not applicable, gap
    checks: list[str]
    attestations: list[str]
    not_applicable: str | None
    checklists: list[str]  # whose runs judge it
    timeline: list[Span]
    satisfied: int  # runs in which it was satisfied
    judged: int  # runs that judge it (missing and unverified ones included)
    exceptions: list[Episode]
    pending: int  # runs in which its attestation was pending


def checklist_controls(
    checklists: Mapping[str, Checklist], checks: Mapping[str, Check]
) -> dict[tuple[str, str], set[str]]:
    """(framework, control) -> the checklists whose runs judge it (by their items' checks
    or attestations)."""
    covering: dict[tuple[str, str], set[str]] = {}
    for name, checklist in checklists.items():
        for item in checklist.items:
            mapped = [checks[c].controls for c in item.checks if c in checks]
            mapped.append(item.attested_controls or {})
            for controls in mapped:
                for framework, ids in controls.items():
                    for control in ids:
                        covering.setdefault((framework, control), set()).add(name)
    return covering


def control_views(
    coverages: Iterable[ControlCoverage],
    populations: Mapping[str, Population],
    covering: Mapping[tuple[str, str], set[str]],
    attested: Mapping[str, Mapping[str, Sequence[str]]],
    found_episodes: Sequence[Episode],
    first: datetime.date,
    last: datetime.date,
) -> list[ControlView]:
    judgements: dict[str, dict[tuple[str, str], str]] = {}  # bundle -> its controls

    def of(run: Run) -> dict[tuple[str, str], str]:
        if run.bundle not in judgements:
            judgements[run.bundle] = run_controls(run, attested)
        return judgements[run.bundle]

    periods = {name: p.by_period() for name, p in populations.items()}
    days = [first + n * DAY for n in range((last - first).days + 1)]
    views = []
    for entry in coverages:
        key = (entry.framework, entry.id)
        names = sorted(n for n in covering.get(key, ()) if n in populations)
        statuses = []
        for day in days:
            if entry.not_applicable:
                statuses.append(NOT_APPLICABLE)
                continue
            moment = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
            found = [
                s
                for n in names
                if (s := _day_status(periods[n].get(period_of(n, moment)), key, of)) is not None
            ]
            statuses.append(min(found, key=DAY_STATUSES.index) if found else NO_RUN)
        satisfied = judged_runs = pending = 0
        for name in names:
            for due in populations[name].dues:
                if due.status in (NOT_YET_DUE, BEFORE_KEPT):
                    continue
                status = of(due.run).get(key) if due.run is not None else NO_RUN
                if status is None or status == NOT_APPLICABLE:
                    continue
                judged_runs += 1
                satisfied += status == SATISFIED
                pending += status == PENDING
        mine = [e for e in found_episodes if entry.id in e.controls.get(entry.framework, [])]
        views.append(
            ControlView(
                entry.framework,
                entry.id,
                entry.title,
                entry.status,
                list(entry.checks),
                list(entry.attestations),
                entry.not_applicable,
                names,
                spans(days, statuses),
                satisfied,
                judged_runs,
                mine,
                pending,
            )
        )
    return views


def _day_status(
    due: Due | None, key: tuple[str, str], of: Callable[[Run], dict[tuple[str, str], str]]
) -> str | None:
    if due is None or due.status == NOT_YET_DUE:
        return None
    if due.run is not None:
        return of(due.run).get(key)
    return {MISSING: NO_RUN, NOT_VERIFIED: NOT_VERIFIED, BEFORE_KEPT: BEFORE_KEPT}[due.status]


def spans(days: Sequence[datetime.date], statuses: Sequence[str]) -> list[Span]:
    """Consecutive days of the same status, as one span each."""
    found: list[Span] = []
    for day, status in zip(days, statuses, strict=True):
        if found and found[-1].status == status and found[-1].last + DAY == day:
            found[-1].last = day
        else:
            found.append(Span(day, day, status))
    return found


# --- samples ---------------------------------------------------------------------------


@dataclass
class Sample:
    checklist: str
    due: datetime.datetime
    series: str
    bundle: str
    chosen: str  # "at random", "on DATE"
    manifest_sha256: str = ""  # the run's, as read: its copy must be that bundle


def sample_size(made: Population, size: int | None = None) -> int:
    """How many of MADE's runs a sample of SIZE (default: by its frequency) draws: at
    most the runs found."""
    wanted = size if size is not None else DEFAULT_SAMPLE.get(made.checklist, 2)
    return min(wanted, len(made.found))


def random_samples(
    populations: Iterable[Population], seed: int, size: int | None = None
) -> list[Sample]:
    """SIZE runs of each checklist (default by its frequency, at most the runs found),
    picked from its runs found in the period, in order of their due time, with
    random.Random(f"{SEED}:{checklist}"): the same seed picks the same runs."""
    picked = []
    for made in populations:
        found = made.found
        chooser = random.Random(f"{seed}:{made.checklist}")  # noqa: S311 - a sample, not a secret
        for index in sorted(chooser.sample(range(len(found)), sample_size(made, size))):
            due, run = found[index], found[index].run
            if run is not None:  # found: each has its run
                picked.append(
                    Sample(
                        made.checklist,
                        due.due,
                        run.series,
                        run.bundle,
                        "at random",
                        run.manifest_sha256,
                    )
                )
    return picked


def dated_samples(
    populations: Iterable[Population], dates: Iterable[datetime.date]
) -> tuple[list[Sample], list[str]]:
    """The runs due on DATES, of every checklist due that day; and what was asked for
    and not found (no run due that day, or its run missing)."""
    picked, absent = [], []
    listed = list(populations)
    for date in sorted(set(dates)):
        dues = [d for p in listed for d in p.dues if d.due.date() == date]
        if not dues:
            absent.append(f"{date.isoformat()}: no checklist run is due that day")
        for due in dues:
            if due.run is None:
                absent.append(f"{date.isoformat()}: the {due.checklist} run is {due.status}")
            else:
                picked.append(
                    Sample(
                        due.checklist,
                        due.due,
                        due.run.series,
                        due.run.bundle,
                        f"on {date}",
                        due.run.manifest_sha256,
                    )
                )
    return picked, absent


# --- reading the evidence ----------------------------------------------------------------


@dataclass
class KeyUse:
    key_id: str
    bundles: int
    first: datetime.datetime
    last: datetime.datetime
    trusted: str  # the anchor's period(s) for the key, in words


@dataclass
class SeriesRead:
    name: str
    path: Path
    head: Path | None
    bundles: int
    problems: list[str]
    keys: list[KeyUse]
    runs: list[Run]
    unverified: list[Unverified]
    pruned_through: dict[str, Any] | None  # the retention record's last removed bundle
    pruned_count: int = 0
    head_signed: datetime.datetime | None = None  # of a head that verifies

    @property
    def kept_through(self) -> datetime.datetime | None:
        if not self.pruned_through:
            return None
        return datetime.datetime.fromisoformat(self.pruned_through["signed_at"])


BUNDLE_ID = re.compile(r"(?P<time>[0-9]{8}T[0-9]{6}\.[0-9]{6}Z)-(?P<kind>.+)")


def _is_series(path: Path) -> bool:
    return bool(bundle_dirs(path)) or (path / PRUNED).is_file()


def find_series(evidence: Path) -> list[Path]:
    """EVIDENCE is one series (bundles in it) or holds one series per checklist, as the
    scheduler keeps them: there, every checklist's series is expected, and one that is
    gone (removed, or emptied) is listed all the same, to be reported as such."""
    if not evidence.is_dir():
        raise PeriodError(f"{evidence}: not a directory of evidence")
    if _is_series(evidence):
        return [evidence]
    found = [p for p in sorted(evidence.iterdir()) if p.is_dir() and _is_series(p)]
    if not found:
        raise PeriodError(
            f"{evidence}: no evidence series in it (bundles, or one directory of "
            f"bundles per checklist: {', '.join(NAMES)})"
        )
    return found + [evidence / n for n in NAMES if evidence / n not in found]


def _order(name: str) -> int:
    return NAMES.index(name) if name in NAMES else len(NAMES)


def heads_for(
    series: Sequence[Path], heads: Sequence[Path], head_dir: Path | None
) -> dict[str, Path | None]:
    """Each series' head: a --head FILE naming the series (its record's `series`), else
    HEAD_DIR/NAME.json (the scheduler's), else where a controller run keeps it."""
    named: dict[str, Path] = {}
    for path in heads:
        try:
            record = json.loads(path.read_text())["record"]
            named[str(record["series"])] = path
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise PeriodError(f"{path}: not a series head ({error})") from error
    unknown = sorted(set(named) - {p.name for p in series})
    if unknown:
        raise PeriodError(
            f"series head(s) of {', '.join(unknown)}, which the evidence does not hold "
            f"({', '.join(p.name for p in series)})"
        )
    found: dict[str, Path | None] = {}
    for path in series:
        candidates = [
            named.get(path.name),
            head_dir / f"{path.name}.json" if head_dir else None,
            default_head(path),
        ]
        found[path.name] = next((c for c in candidates if c is not None and c.is_file()), None)
    return found


def read_series(path: Path, anchor: TrustAnchor, head: Path | None) -> SeriesRead:
    """SERIES verified as `compliance verify` verifies it, and its bundles that verify
    read as runs."""
    if not _is_series(path):  # a checklist's whole series gone: none of its runs is here
        problems = [f"{path.name}: no series: {path} holds no bundle, so none of its runs is here"]
        if head is not None:
            problems += [f"{path.name}: {p}" for p in check_head(head, anchor, [], None)]
        return SeriesRead(path.name, path, head, 0, problems, [], [], [], None)
    try:
        outcome = verify_bundles(path, anchor, head)
    except EvidenceError as error:
        return SeriesRead(path.name, path, head, 0, [str(error)], [], [], [], None)
    record = None
    with contextlib.suppress(EvidenceError):  # among the verification's problems already
        record = pruned_record(path, anchor)
    runs: list[Run] = []
    unverified: list[Unverified] = []
    keys: dict[str, KeyUse] = {}
    for check in outcome.checks:
        run = None
        if not check.problems and check.signed_at and check.manifest_sha256:
            try:
                run = _read_run(
                    path.name, path / check.bundle, check.signed_at, check.manifest_sha256
                )
            except _ChangedError as error:  # since it verified: what it holds now did not
                check.problems.append(str(error))
        if run is None:
            placed = _placed(check.bundle)
            if placed:  # else it is among the problems only: it stands at no due time
                unverified.append(
                    Unverified(
                        path.name,
                        check.bundle,
                        placed[1],
                        placed[0],
                        "; ".join(check.problems) or "no signed time",
                    )
                )
            continue
        runs.append(run)
        use = keys.get(check.key_id or "")
        if use is None:
            keys[check.key_id or ""] = KeyUse(
                check.key_id or "",
                1,
                run.signed_at,
                run.signed_at,
                _trusted(anchor, check.key_id),
            )
        else:
            use.bundles += 1
            use.last = run.signed_at
    signed, other = _head_read(path.name, head, anchor)
    return SeriesRead(
        path.name,
        path,
        head,
        len(outcome.checks),
        other + _problems(path.name, outcome),
        list(keys.values()),
        runs,
        unverified,
        record["pruned_through"] if record else None,
        int(record.get("count", 0)) if record else 0,
        signed,
    )


def _head_read(
    name: str, head: Path | None, anchor: TrustAnchor
) -> tuple[datetime.datetime | None, list[str]]:
    """When HEAD was signed, if it verifies (if not, the verification says why), and
    whether it is the head of the series NAME: one of another series - a copy of it
    beside its own - vouches for nothing here."""
    if head is None:
        return None, []
    try:
        record = read_head(head, anchor)
        signed = datetime.datetime.fromisoformat(str(record["signed_at"]))
    except (EvidenceError, ValueError):
        return None, []
    if record.get("series") != name:
        return signed, [
            f"{name}: {head} is the series head of {record.get('series')}, not of {name}"
        ]
    return signed, []


def stale_head(series: SeriesRead, made: Population) -> str | None:
    """Why SERIES' head cannot show that the runs of MADE are all here: it was signed
    before the period's last run was due, so the runs after it could have been removed
    (with the head kept from then) without a trace."""
    due = [d.due for d in made.dues if d.status != NOT_YET_DUE]
    if series.head_signed is None or not due or series.head_signed >= due[-1]:
        return None
    return (
        f"{series.name}: the series head was signed {when(series.head_signed)}, before the "
        f"period's last run due {when(due[-1])}: it cannot show that no later run was "
        "removed (give the newest head)"
    )


def _placed(bundle: str) -> tuple[datetime.datetime, str] | None:
    """The time and checklist a bundle's name claims (unsigned: used only to place a
    bundle that does not verify), or None for a name that is no bundle id."""
    named = BUNDLE_ID.fullmatch(bundle)
    try:
        at = datetime.datetime.strptime(named["time"], BUNDLE_TIME) if named else None
    except ValueError:  # a name of a day that is no day
        return None
    return (at.replace(tzinfo=datetime.UTC), named["kind"]) if at and named else None


def _trusted(anchor: TrustAnchor, key_id: str | None) -> str:
    """The periods in which ANCHOR trusts the key, in words."""
    periods = []
    for key in (k for k in anchor.keys if k.key_id == key_id):
        start = key.not_before.isoformat() if key.not_before else None
        end = key.not_after.isoformat() if key.not_after else None
        if start and end:
            periods.append(f"from {start} to {end}")
        elif start or end:
            periods.append(f"from {start}" if start else f"until {end}")
        else:
            periods.append("pinned, at any time")
    return "; ".join(periods)


def _problems(series: str, outcome: Verification) -> list[str]:
    found = [f"{series}/{c.bundle}: {p}" for c in outcome.checks for p in c.problems]
    return found + [f"{series}: {p}" for p in outcome.chain + outcome.series + outcome.head]


class _ChangedError(EvidenceError):
    """A bundle's files are not those it verified with (changed since)."""


def _read_run(series: str, bundle: Path, signed_at: datetime.datetime, manifest_sha256: str) -> Run:
    """BUNDLE's run, from the bytes of its manifest that verified (MANIFEST_SHA256) and
    the files it lists by their hashes: a file changed between the verification and this
    reading is not read as the run's."""
    manifest_bytes = (bundle / "manifest.json").read_bytes()
    if hashlib.sha256(manifest_bytes).hexdigest() != manifest_sha256:
        raise _ChangedError("manifest.json changed since it verified")
    listed = json.loads(manifest_bytes)["files"]

    def read(name: str) -> Any:
        if name not in listed:
            return None
        data = (bundle / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != listed[name]["sha256"]:
            raise _ChangedError(f"{name} changed since it verified")
        return json.loads(data)

    run, results, items = read("run.json") or {}, read("results.json") or {}, read("checklist.json")
    return Run(
        series,
        bundle.name,
        str(run.get("kind", "")),
        signed_at,
        tuple(results.get("results", [])),
        tuple(items or []),
        manifest_sha256,
        tuple(results.get("hosts", [])),
        str(run.get("started", "")),
    )


# --- the report ------------------------------------------------------------------------


@dataclass
class PeriodReport:
    first: datetime.date
    last: datetime.date
    made: datetime.datetime
    evidence: str
    series: list[SeriesRead]
    populations: dict[str, Population]
    episodes: list[Episode]
    controls: list[ControlView]
    frameworks: dict[str, str]  # id -> title, those reported
    attested: list[Attested]
    pending: list[Pending]
    samples: list[Sample]
    seed: int | None
    not_sampled: list[str]  # dates asked for without a run
    grace: datetime.timedelta = GRACE
    unscheduled: int = 0  # runs of no checklist (compliance check)
    seed_given: bool = False  # by whoever ran the report (--seed), not drawn by it
    sample_asked: int | None = None  # --sample N; None: the sizes by frequency
    sample_sizes: dict[str, int] = field(default_factory=dict)  # checklist -> runs drawn
    # item -> the controls its checklist says its attestation supports
    item_controls: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

    @property
    def period_end(self) -> datetime.datetime:
        """The end of the period's last day (UTC)."""
        return datetime.datetime.combine(self.last + DAY, datetime.time(), datetime.UTC)

    @property
    def end(self) -> datetime.datetime:
        """Where open episodes are measured to: the period's end, or when it was made."""
        return min(self.period_end, self.made)

    @property
    def problems(self) -> list[str]:
        """Why the evidence is not verified, the most telling first: series without a
        head, then what the heads show, then every other problem."""
        headless = [s.name for s in self.series if s.head is None]
        found = (
            [
                f"NO SERIES HEADS for {', '.join(headless)}: whether the newest runs are all "
                "here cannot be shown (give --head or --head-dir)"
            ]
            if headless
            else []
        )
        everything = [p for s in self.series for p in s.problems]
        return found + sorted(everything, key=lambda p: "series head" not in p)

    @property
    def verified(self) -> bool:
        return not self.problems

    def sample_options(self) -> str:
        """The options that draw the same sample again (with the same evidence)."""
        options = f"--seed {self.seed}"
        return options + (f" --sample {self.sample_asked}" if self.sample_asked else "")

    def verdict(self) -> str:
        """The report's first line."""
        if self.verified:
            count = sum(s.bundles for s in self.series)
            names = ", ".join(s.name for s in self.series)
            return (
                f"VERIFIED: {count} bundles in {len(self.series)} series ({names}) verify "
                "against the trust anchor, their chains and their series heads."
            )
        problems = self.problems
        more = f" (and {len(problems) - 2} more problems below)" if len(problems) > 2 else ""
        return "NOT VERIFIED: " + "; ".join(problems[:2]) + more

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": PERIOD_FORMAT,
            "period": {"from": self.first.isoformat(), "to": self.last.isoformat()},
            "made": self.made.isoformat(),
            "tool": f"compliance {__version__}",
            "evidence": self.evidence,
            "verified": self.verified,
            "problems": self.problems,
            "series": [_series_dict(s) for s in self.series],
            "grace_seconds": int(self.grace.total_seconds()),
            "population": {n: _population_dict(p) for n, p in self.populations.items()},
            "unscheduled_runs": self.unscheduled,
            "exceptions": [_episode_dict(e, self.end) for e in self.episodes],
            "attestations": [_plain(a) for a in self.attested],
            "pending": [_plain(p) for p in self.pending],
            "controls": [_control_dict(c) for c in self.controls],
            "samples": {
                "seed": self.seed,
                "seed_given": self.seed_given,
                "asked": self.sample_asked,
                "sizes": self.sample_sizes,
                "method": SAMPLING if self.seed is not None else "on the dates asked for",
                "picked": [{**_plain(s), "copy": sample_path(s)} for s in self.samples],
                "not_found": self.not_sampled,
            },
        }


SAMPLING = (
    'sorted(random.Random(f"{seed}:{checklist}").sample(range(len(found)), size)), over '
    "each checklist's runs found in the period in order of their due time, size its "
    "sample's (Python's Mersenne Twister, seeded from the text: the same seed and sizes "
    "pick the same runs)"
)


def sample_path(sample: Sample) -> str:
    return f"samples/{sample.series}/{sample.bundle}"


def _plain(value: Any) -> Any:
    """A dataclass, date or time as JSON data."""
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return int(value.total_seconds())
    if isinstance(value, RemediationTime):
        return {"hours": value.hours, "basis": value.basis}
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _series_dict(series: SeriesRead) -> dict[str, Any]:
    return {
        "name": series.name,
        "head": str(series.head) if series.head else None,
        "head_signed": series.head_signed.isoformat() if series.head_signed else None,
        "bundles": series.bundles,
        "verified": not series.problems and series.head is not None,
        "problems": series.problems,
        "keys": _plain(series.keys),
        "pruned_through": series.pruned_through,
        "pruned_count": series.pruned_count,
    }


def _population_dict(made: Population) -> dict[str, Any]:
    return {
        "schedule": made.schedule,
        "expected": made.expected,
        "found": len(made.found),
        "counts": dict(made.counts()),
        "dues": [
            {
                "due": d.due.isoformat(),
                "status": d.status,
                "bundle": d.run.bundle if d.run else None,
                "manifest_sha256": d.run.manifest_sha256 if d.run else None,
                "signed_at": d.run.signed_at.isoformat() if d.run else None,
                "late_seconds": int(d.late_by.total_seconds()) if d.late_by else None,
                "additional": [r.bundle for r in d.extra],
                "not_verified": _plain(d.unverified) if d.unverified else None,
            }
            for d in made.dues
        ],
    }


def _episode_dict(episode: Episode, until: datetime.datetime) -> dict[str, Any]:
    return {
        **_plain(episode),
        "open": episode.fixed is None,
        "duration_seconds": int(episode.duration(until).total_seconds()),
        "within_deadline": episode.within_deadline(until),
    }


def _control_dict(view: ControlView) -> dict[str, Any]:
    return {
        **_plain({k: getattr(view, k) for k in view.__dataclass_fields__ if k != "exceptions"}),
        "exceptions": [
            f"{e.check} on {e.host} from {e.first_seen.isoformat()}" for e in view.exceptions
        ],
    }


def period_report(
    evidence: Path,
    first: datetime.date,
    last: datetime.date,
    anchor: TrustAnchor,
    catalogs: Mapping[str, Catalog],
    checks: Sequence[Check],
    checklists: Mapping[str, Checklist],
    coverage: Mapping[str, Sequence[ControlCoverage]],
    heads: Sequence[Path] = (),
    head_dir: Path | None = None,
    frameworks: Sequence[str] | None = None,
    sample: int | None = None,
    dates: Sequence[datetime.date] | None = None,
    seed: int | None = None,
    now: datetime.datetime | None = None,
) -> PeriodReport:
    """The period [FIRST, LAST] (whole UTC days) of the series under EVIDENCE."""
    now = now or datetime.datetime.now(datetime.UTC)
    if last < first:
        raise PeriodError(f"--to {last} is before --from {first}")
    if last > now.date():
        raise PeriodError(f"--to {last}: the period cannot end after today ({now.date()})")
    start = datetime.datetime.combine(first, datetime.time(), datetime.UTC)
    end = datetime.datetime.combine(last + DAY, datetime.time(), datetime.UTC)
    paths = sorted(find_series(evidence), key=lambda p: (_order(p.name), p.name))
    found_heads = heads_for(paths, heads, head_dir)
    series = [read_series(p, anchor, found_heads[p.name]) for p in paths]
    runs = [r for s in series for r in s.runs]
    by_check = {c.id: c for c in checks}
    populations = {}
    for name, checklist in checklists.items():
        mine = [
            s
            for s in series
            if s.name == name
            or any(r.checklist == name for r in s.runs)
            or any(u.checklist == name for u in s.unverified)
        ]
        if not mine:
            continue
        kept = [s.kept_through for s in mine if s.kept_through is not None]
        populations[name] = population(
            name,
            parse_schedule(checklist.schedule),
            runs,
            start,
            end,
            now,
            kept_through=max(kept, default=None),
            unverified=[u for s in mine for u in s.unverified],
        )
    for read in series:
        if read.name in populations and (stale := stale_head(read, populations[read.name])):
            read.problems.append(stale)
    attested_controls = {
        i.id: i.attested_controls
        for c in checklists.values()
        for i in c.items
        if i.attested_controls is not None
    }
    found_episodes = episodes(runs, by_check, start, end)
    chosen = list(frameworks or catalogs)
    views = control_views(
        [e for f in chosen for e in coverage[f]],
        populations,
        checklist_controls(checklists, by_check),
        attested_controls,
        found_episodes,
        first,
        last,
    )
    counted, pending = attestations(populations.values(), set(attested_controls))
    not_found: list[str] = []
    seed_given, sizes = seed is not None, {}
    if dates:
        outside = [d for d in dates if not first <= d <= last]
        if outside:
            raise PeriodError(
                f"--dates {', '.join(map(str, outside))}: outside the period {first} to {last}"
            )
        picked, not_found = dated_samples(populations.values(), dates)
        seed = None
    else:
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        picked = random_samples(populations.values(), seed, sample)
        sizes = {n: sample_size(p, sample) for n, p in populations.items()}
    return PeriodReport(
        first,
        last,
        now,
        str(evidence),
        series,
        populations,
        found_episodes,
        views,
        {f: catalogs[f].title for f in chosen},
        counted,
        pending,
        picked,
        seed,
        not_found,
        unscheduled=sum(r.checklist not in checklists for r in runs),
        seed_given=seed_given and not dates,
        sample_asked=sample,
        sample_sizes=sizes,
        item_controls={i: dict(c) for i, c in attested_controls.items()},
    )


# --- the period bundle -----------------------------------------------------------------


def write_period_bundle(
    report: PeriodReport,
    reports: Mapping[str, bytes],
    out: Path,
    key: SigningKey,
    anchor: TrustAnchor,
) -> Path:
    """OUT: a new signed bundle with period.json, the REPORTS made of it (name -> content:
    compliance.period_html.report_files) and the sampled runs' bundles, each verified
    again as copied, under samples/."""
    check_out(out, Path(report.evidence))
    files: dict[str, bytes] = {}
    series = {s.name: s.path for s in report.series}
    for sample in report.samples:
        source = series[sample.series] / sample.bundle
        copied = _copied(source, anchor, sample.manifest_sha256)
        for name, data in copied.items():
            files[f"{sample_path(sample)}/{name}"] = data
    document = report.as_dict()
    files["period.json"] = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
    files.update(reports)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_signed_bundle(out, files, key, report.made)
    except OSError as error:
        raise PeriodError(f"{out}: cannot write it ({error.strerror or error})") from error


def check_out(out: Path, evidence: Path) -> None:
    """That OUT may take a period bundle: a new directory, outside the EVIDENCE it reports
    on (there it would be a stray entry of a series, which fails every verification of it
    after). Checked before the work, and again before writing."""
    if out.exists() or out.is_symlink():
        raise PeriodError(f"{out}: exists; a period bundle is written to a new directory")
    target, root = out.resolve(), evidence.resolve()
    if target == root or root in target.parents:
        raise PeriodError(
            f"{out}: inside the evidence {evidence}; a period bundle is written outside it"
        )
    staging = out.with_name(f".{out.name}.partial")
    if staging.exists():
        raise PeriodError(f"{staging}: an interrupted run's leftovers; remove them first")


def _copied(bundle: Path, anchor: TrustAnchor, manifest_sha256: str) -> dict[str, bytes]:
    """BUNDLE's files, read once and verified as read (a copy outside the evidence): what
    goes into the period bundle is what verified, and the run the report read (its
    manifest's hash MANIFEST_SHA256), not another bundle of the same name."""
    files = {str(p.relative_to(bundle)): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    if hashlib.sha256(files.get("manifest.json", b"")).hexdigest() != manifest_sha256:
        raise PeriodError(
            f"{bundle}: not the bundle the report read (its manifest changed since); "
            "make the report again"
        )
    with tempfile.TemporaryDirectory(prefix="compliance-period-") as scratch:
        copy = Path(scratch) / bundle.name
        for name, data in files.items():
            target = copy / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        problems = verify_bundles(copy, anchor).problems
    if problems:
        raise PeriodError(f"{bundle}: the sampled bundle does not verify: {problems[0]}")
    return files
