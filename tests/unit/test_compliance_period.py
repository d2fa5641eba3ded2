"""The period report's functions over runs (REQ-COMP-18 to REQ-COMP-22): the population
from the checklists' own schedules, failure episodes and their deadlines, attestations
counted by their run, the per-control timeline, and reproducible samples."""

from __future__ import annotations

import datetime

import pytest
import yaml

from compliance.catalog import CatalogError, load_catalogs
from compliance.checklists import CHECKLIST_DIR, NAMES, load_checklists
from compliance.checks import load_checks, remediation_time
from compliance.controls import judged
from compliance.coverage import ControlCoverage
from compliance.engine import run_checks
from compliance.gather.runner import HostFacts
from compliance.period import (
    BEFORE_KEPT,
    FAILED,
    LATE,
    MISSING,
    NO_RUN,
    NOT_VERIFIED,
    NOT_YET_DUE,
    ON_TIME,
    PENDING,
    SATISFIED,
    PeriodError,
    Run,
    Span,
    Unverified,
    attestations,
    control_views,
    dated_samples,
    episodes,
    parse_schedule,
    population,
    random_samples,
    spans,
)

UTC = datetime.UTC
DAILY = parse_schedule("*-*-* 09:00:00 UTC")
START = datetime.datetime(2025, 3, 1, tzinfo=UTC)
END = datetime.datetime(2025, 4, 1, tzinfo=UTC)  # March
NOW = datetime.datetime(2026, 1, 1, tzinfo=UTC)


def at(day: int, hour: int = 9, minute: int = 0, month: int = 3) -> datetime.datetime:
    return datetime.datetime(2025, month, day, hour, minute, tzinfo=UTC)


def run(moment: datetime.datetime, results=(), items=(), checklist: str = "daily") -> Run:
    bundle = f"{moment.strftime('%Y%m%dT%H%M%S.%fZ')}-{checklist}"
    return Run(checklist, bundle, checklist, moment, tuple(results), tuple(items))


def result(check: str, host: str, status: str, severity: str = "high", **extra) -> dict:
    return {
        "check": check,
        "host": host,
        "status": status,
        "severity": severity,
        "detail": "found",
        "controls": {"iso27001-2022": ["A.8.8"]},
        **extra,
    }


# --- schedules -------------------------------------------------------------------------


def test_the_checklists_own_schedules_are_read() -> None:
    schedules = {
        name: parse_schedule(
            yaml.safe_load((CHECKLIST_DIR / f"{name}.yaml").read_text())["schedule"]
        )
        for name in NAMES
    }
    june = (datetime.datetime(2025, 6, 1, tzinfo=UTC), datetime.datetime(2025, 7, 1, tzinfo=UTC))
    assert len(schedules["daily"].due_times(*june)) == 30
    weekly = schedules["weekly"].due_times(*june)
    assert [d.day for d in weekly] == [2, 9, 16, 23, 30] and weekly[0].hour == 10
    assert schedules["monthly"].due_times(*june) == [datetime.datetime(2025, 6, 1, 14, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("daily", "the period report reads"),
        ("Mon..Fri *-*-* 10:00", "the period report reads"),
        ("Mun *-*-* 10:00 UTC", "no weekday Mun"),
        ("*-*-32 10:00 UTC", "no day 32"),
        ("*-*-* 25:00 UTC", "hour must be in"),
        # Without its zone a schedule runs in each host's local time.
        ("*-*-* 09:00:00", "a schedule without its zone"),
    ],
)
def test_a_schedule_it_cannot_read_is_an_error(expression: str, message: str) -> None:
    with pytest.raises(PeriodError, match=message):
        parse_schedule(expression)


# --- the population --------------------------------------------------------------------


def test_each_due_time_is_found_late_missing_or_before_the_evidence_kept() -> None:
    runs = [run(at(day)) for day in range(3, 32) if day not in (10, 20)]
    runs += [
        run(at(20, 15, 30)),  # 6 h 30 min after its due time: late
        run(at(20, 16)),  # another in the same window: an additional run
        run(at(2, 8, 59)),  # a minute early for 2 March: 1 March's run, a day late
    ]
    made = population("daily", DAILY, runs, START, END, NOW, kept_through=at(1, 9))
    by_day = {d.due.day: d for d in made.dues}
    assert len(made.dues) == 31 and made.expected == 31
    assert by_day[1].status == LATE and by_day[1].run.signed_at == at(2, 8, 59)
    assert by_day[2].status == MISSING  # not before the evidence kept: after it
    assert by_day[10].status == MISSING
    assert by_day[20].status == LATE and by_day[20].late_by == datetime.timedelta(
        hours=6, minutes=30
    )
    assert [r.signed_at for r in by_day[20].extra] == [at(20, 16)]
    assert made.counts() == {ON_TIME: 27, MISSING: 2, LATE: 2}
    # Nothing found: before what retention removed, it is not missing.
    empty = population("daily", DAILY, [], START, END, NOW, kept_through=at(4, 9))
    assert [d.status for d in empty.dues[:5]] == [BEFORE_KEPT] * 4 + [MISSING]


def test_a_late_run_across_the_period_end_counts_for_its_due_time() -> None:
    runs = [run(at(31, 9)), run(datetime.datetime(2025, 4, 1, 1, tzinfo=UTC))]
    made = population("daily", DAILY, runs, START, END, NOW)
    assert made.dues[-1].status == ON_TIME
    late = [run(datetime.datetime(2025, 4, 1, 1, tzinfo=UTC))]
    last = population("daily", DAILY, late, START, END, NOW).dues[-1]
    assert (
        last.due == at(31) and last.status == LATE and last.late_by == datetime.timedelta(hours=16)
    )
    # A run due before the period, late into it, is not this period's run of 1 March.
    early = population("daily", DAILY, [run(at(1, 2))], START, END, NOW)
    assert early.dues[0].status == MISSING and early.earlier.status == LATE


def test_a_bundle_that_does_not_verify_and_runs_not_yet_due() -> None:
    broken = Unverified("daily", "x", "daily", at(5), "results.json: changed")
    made = population("daily", DAILY, [run(at(5, 10))], START, END, at(20, 8), unverified=[broken])
    day5 = made.dues[4]
    assert day5.status == NOT_VERIFIED and day5.unverified is broken and day5.run is None
    assert [r.signed_at for r in day5.extra] == [at(5, 10)]  # the later one is additional
    assert made.dues[19].status == NOT_YET_DUE and made.expected == 19
    # A report made within a run's grace (--to today, an hour after the 09:00 run was
    # due) does not call it missing: it may still come on time. Once the grace has
    # passed, it is missing.
    nothing_yet = population("daily", DAILY, [], START, END, at(20, 10))
    assert nothing_yet.dues[19].status == NOT_YET_DUE and nothing_yet.expected == 19
    grace_over = population("daily", DAILY, [], START, END, at(20, 15, 1))
    assert grace_over.dues[19].status == MISSING and grace_over.expected == 20


# --- exceptions and their deadlines ------------------------------------------------------


@pytest.fixture(scope="module")
def checks():
    return {c.id: c for c in load_checks(load_catalogs())}


def test_an_episode_runs_from_first_failure_to_the_first_pass(checks) -> None:
    statuses = ["pass", "fail", "fail", "error", "pass", "fail", "not_applicable", "fail"]
    runs = [
        run(at(day + 1), [result("patches.security_updates", "dmz-01", s)])
        for day, s in enumerate(statuses)
    ]
    first, second, third = episodes(runs, checks, START, END)
    assert (first.first_seen, first.last_seen, first.fixed) == (at(2), at(4), at(5))
    assert first.runs == {"fail": 2, "error": 1} and first.fixed_how == "passed"
    assert first.duration(END) == datetime.timedelta(days=3) and first.within_deadline(END)
    assert second.fixed == at(7) and second.fixed_how == "no longer applies"
    assert third.fixed is None and third.duration(END) == END - at(8)
    # An episode fixed before the period is not the period's; one fixed in it is.
    later = datetime.datetime(2025, 3, 5, 12, tzinfo=UTC)
    assert [e.first_seen for e in episodes(runs, checks, later, END)] == [at(6), at(8)]


def test_a_waiver_that_expires_during_an_episode(checks) -> None:
    waiver = {"reason": "rebuild", "approver": "ciso", "expires": "2025-03-03"}
    expired = {**waiver, "expired": True}
    runs = [
        run(at(1), [result("integrity.aide", "dmz-01", "waived", "medium", waiver=waiver)]),
        run(at(3), [result("integrity.aide", "dmz-01", "waived", "medium", waiver=waiver)]),
        run(at(4), [result("integrity.aide", "dmz-01", "fail", "medium", waiver=expired)]),
        run(at(5), [result("integrity.aide", "dmz-01", "pass", "medium")]),
    ]
    [episode] = episodes(runs, checks, START, END)
    [use] = episode.waivers
    assert (use.approver, use.expires, use.waived, use.not_waived) == ("ciso", "2025-03-03", 2, 1)
    assert (use.first_waived, use.last_waived, use.not_waived_from) == (at(1), at(3), at(4))
    assert use.expired_during
    # A medium check without a time of its own: REQ-HARD-12's 30 days for medium.
    assert episode.deadline.hours == 30 * 24 and "medium" in episode.deadline.basis


def test_an_episode_is_held_to_the_severity_its_runs_recorded(checks) -> None:
    # firewall.default_drop is critical in today's catalog; the signed runs of the
    # episode recorded it as high: the deadline in force then was high's.
    assert checks["firewall.default_drop"].severity == "critical"
    runs = [
        run(at(1), [result("firewall.default_drop", "core-01", "fail")]),
        run(at(2), [result("firewall.default_drop", "core-01", "pass")]),
    ]
    [episode] = episodes(runs, checks, START, END)
    assert (episode.severity, episode.deadline.hours) == ("high", 7 * 24)
    assert "high severity" in episode.deadline.basis
    # A check of security updates: REQ-HARD-12's deadline for the recorded severity.
    critical = result("patches.security_updates", "dmz-01", "fail", "critical")
    [patch] = episodes([run(at(3), [critical])], checks, START, END)
    assert patch.deadline.hours == 24 and patch.deadline.basis.startswith("REQ-HARD-12 patch")


def test_an_episode_is_held_to_the_deadline_its_first_run_signed(checks) -> None:
    # Each run records the deadline its checks had (engine.Result.remediation); the
    # check's definition edited since (a longer time of its own, another severity)
    # moves no deadline of a failure already found.
    signed = {"hours": 72, "basis": "the check's own remediation time"}
    runs = [
        run(at(1), [result("integrity.aide", "dmz-01", "fail", "medium", remediation=signed)]),
        run(at(6), [result("integrity.aide", "dmz-01", "pass", "medium")]),
    ]
    [episode] = episodes(runs, checks, START, END)
    assert checks["integrity.aide"].remediation_time().hours == 30 * 24  # today's
    assert (episode.deadline.hours, episode.deadline.basis) == (72, signed["basis"])
    assert not episode.within_deadline(END)  # 5 days against the 72 h signed
    # What a run did not record in a form it can be read in is no deadline: the
    # severity's, as for runs from before runs recorded theirs.
    for unreadable in ({"hours": "72"}, {"hours": 0, "basis": "x"}, {"hours": True}, "72h"):
        broken = result("integrity.aide", "dmz-01", "fail", "medium", remediation=unreadable)
        [old] = episodes([run(at(1), [broken])], checks, START, END)
        assert old.deadline.hours == 30 * 24, unreadable


def test_every_result_records_the_deadline_its_check_has(checks) -> None:
    facts = HostFacts("dmz-01", ["dmz"], {"aide": {"daily_check": False}})
    [aide] = run_checks([checks["integrity.aide"]], [facts], [])
    assert aide.status == "fail"
    assert aide.as_dict()["remediation"] == {
        "hours": 30 * 24,
        "basis": "REQ-HARD-12's deadline for medium severity, for a check without its own",
    }


def test_deadlines_the_patch_sla_a_checks_own_time_or_its_severitys(checks) -> None:
    patches = checks["patches.security_updates"].remediation_time()
    assert (patches.hours, str(patches)) == (7 * 24, "7 d")
    assert patches.basis == "REQ-HARD-12 patch deadline for high severity"
    assert checks["tls.policy"].remediation_time().hours == 24  # critical
    assert remediation_time("low", "patch_sla").hours == 90 * 24
    own = remediation_time("critical", "36h")
    assert (own.hours, str(own), own.basis) == (36, "36 h", "the check's own remediation time")
    assert remediation_time("low", "14d").hours == 14 * 24
    with pytest.raises(CatalogError, match="remediate_within"):
        remediation_time("low", "two weeks")


def test_a_check_with_a_malformed_remediation_time_is_refused(tmp_path) -> None:
    catalogs = load_catalogs()
    check = {
        "id": "x.y",
        "title": "t",
        "rationale": "REQ-COMP-20 - t",
        "scope": "host",
        "severity": "low",
        "rule": {"fact": "a", "equals": 1},
        "controls": {"iso27001-2022": ["A.8.8"]},
        "remediation": "r",
        "remediate_within": "soon",
    }
    (tmp_path / "x.yaml").write_text(yaml.safe_dump([check]))
    with pytest.raises(CatalogError, match=r"\(x.y\): remediate_within 'soon'"):
        load_checks(catalogs, tmp_path)
    check["remediate_within"] = "48h"
    (tmp_path / "x.yaml").write_text(yaml.safe_dump([check]))
    assert load_checks(catalogs, tmp_path)[0].remediation_time().hours == 48


# --- attestations ----------------------------------------------------------------------


def item(attested_at: str | None) -> dict:
    attestation = {"by": "alice", "at": attested_at, "note": "n", "signed_by": "ab"}
    return {
        "id": "daily.security_alerts",
        "title": "Security alerts",
        "status": "pass" if attested_at else "pending",
        "attestation": attestation if attested_at else None,
    }


def test_an_attestation_a_later_run_shows_does_not_undo_a_pending_result() -> None:
    runs = [
        run(at(1), items=[item("2025-03-01T08:00:00+00:00")]),
        run(at(2), items=[item(None)]),
        run(at(2, 15), items=[item("2025-03-02T08:00:00+00:00")]),  # backdated
        run(at(3), items=[item(None)]),
        run(at(3, 15), items=[item("2025-03-03T14:00:00+00:00")]),  # late
    ]
    made = population("daily", DAILY, runs, START, at(4), NOW)
    counted, pending = attestations([made], {"daily.security_alerts"})
    assert [(a.at, a.due, a.counted) for a in counted] == [
        ("2025-03-01T08:00:00+00:00", at(1), True)
    ]
    assert [(p.due, p.bundle) for p in pending] == [
        (at(2), runs[1].bundle),
        (at(3), runs[3].bundle),
    ]
    [backdated], [late] = pending[0].later, pending[1].later
    assert not backdated.counted and "backdated, not counted" in backdated.remark
    assert (
        "dated 2025-03-02 08:00 UTC, before the run signed 2025-03-02 09:00 UTC" in backdated.remark
    )
    assert "made 2025-03-03 14:00 UTC, after the run" in late.remark and "late" in late.remark


# --- controls --------------------------------------------------------------------------


def test_a_control_day_by_day_and_its_share() -> None:
    runs = [run(at(day), [result("patches.security_updates", "h", "pass")]) for day in (1, 2, 4)]
    runs.append(run(at(5), [result("patches.security_updates", "h", "fail")]))
    runs.append(run(at(6), items=[{"id": "attested", "attestation": None, "status": "pending"}]))
    made = population("daily", DAILY, runs, START, at(7), NOW)
    entry = ControlCoverage("iso27001-2022", "A.8.8", "Vulnerabilities", "technological")
    entry.checks = ["patches.security_updates"]
    [view] = control_views(
        [entry],
        {"daily": made},
        {("iso27001-2022", "A.8.8"): {"daily"}},
        {"attested": {"iso27001-2022": ["A.8.8"]}},
        [],
        START.date(),
        at(6).date(),
    )
    assert [(s.first.day, s.last.day, s.status) for s in view.timeline] == [
        (1, 2, SATISFIED),
        (3, 3, NO_RUN),
        (4, 4, SATISFIED),
        (5, 5, FAILED),
        (6, 6, PENDING),
    ]
    assert (view.satisfied, view.judged, view.pending) == (3, 6, 1)


def test_a_run_judges_a_control_by_its_worst() -> None:
    assert judged({"pass", "not_applicable"}) == SATISFIED
    assert judged({"pass", "waived"}) == FAILED
    assert judged({"attested", "pending"}) == PENDING
    assert judged({"not_applicable"}) == "not applicable"
    assert judged(set()) is None
    days = [START.date() + datetime.timedelta(days=n) for n in range(4)]
    assert spans(days, ["a", "a", "b", "a"]) == [
        Span(days[0], days[1], "a"),
        Span(days[2], days[2], "b"),
        Span(days[3], days[3], "a"),
    ]


# --- samples ---------------------------------------------------------------------------


def test_samples_are_reproduced_from_their_seed_and_capped_by_the_population() -> None:
    year = (datetime.datetime(2025, 1, 1, tzinfo=UTC), datetime.datetime(2026, 1, 1, tzinfo=UTC))
    daily_runs = [run(d) for d in DAILY.due_times(*year)]
    monthly = parse_schedule("*-*-01 14:00:00 UTC")
    monthly_runs = [run(d, checklist="monthly") for d in monthly.due_times(*year)]
    populations = [
        population("daily", DAILY, daily_runs, *year, NOW),
        population("monthly", monthly, monthly_runs[:1], *year, NOW),
    ]
    picked = random_samples(populations, 1234)
    assert [s.checklist for s in picked].count("daily") == 25  # the daily default
    assert [s.checklist for s in picked].count("monthly") == 1  # only one found
    again = random_samples(populations, 1234)
    assert [s.bundle for s in again] == [s.bundle for s in picked]
    assert [s.bundle for s in random_samples(populations, 1235)] != [s.bundle for s in picked]
    assert len(random_samples(populations, 1234, size=3)) == 4
    dated, absent = dated_samples(
        populations, [datetime.date(2025, 1, 1), datetime.date(2025, 2, 1)]
    )
    assert [(s.checklist, s.due.date().isoformat()) for s in dated] == [
        ("daily", "2025-01-01"),
        ("monthly", "2025-01-01"),
        ("daily", "2025-02-01"),
    ]
    assert absent == ["2025-02-01: the monthly run is missing"]


def test_every_control_of_the_catalogs_is_judged_by_a_checklist_or_not_applicable() -> None:
    from compliance.coverage import coverage, load_applicability
    from compliance.period import checklist_controls

    catalogs = load_catalogs()
    checks = load_checks(catalogs)
    checklists = load_checklists(catalogs, checks)
    covering = checklist_controls(checklists, {c.id: c for c in checks})
    table = coverage(catalogs, checks, checklists, load_applicability(catalogs))
    unjudged = [
        f"{e.framework} {e.id}"
        for entries in table.values()
        for e in entries
        if not e.not_applicable and (e.framework, e.id) not in covering
    ]
    assert unjudged == []
