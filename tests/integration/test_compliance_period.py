"""`compliance period` over a year of real evidence (REQ-COMP-18 to REQ-COMP-23).

The year (tests.support.period) is made once for the module: 2025's daily, weekly and
monthly runs over two hosts, each a bundle written by the writer the commands use on
the test's clock, from the real checks over recorded facts, with a missing day, a late
run (and one late across the period's end), a failure fixed within its deadline and one
fixed after it, a waiver that expires during an episode, an attestation left pending
(and recorded afterwards, backdated), the evidence key rotated on 1 July and the first
days removed by retention. Each test runs the command as an auditor would.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import random
import shutil
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pytest

from compliance.catalog import load_catalogs
from compliance.checklists import load_checklists
from compliance.checks import load_checks
from compliance.coverage import coverage, load_applicability
from compliance.evidence import TrustAnchor, load_signing_key, write_bundle, write_head
from compliance.oscal import NS
from compliance.period import PeriodError, period_report, write_period_bundle
from tests.support.browser import laid_out, png_rows, screenshot
from tests.support.commands import compliance
from tests.support.oscal import validated
from tests.support.period import Year, make_year, period_arguments


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory) -> Year:
    made = make_year(tmp_path_factory.mktemp("year"))
    print(f"\na year of evidence made in {made.seconds} s")
    return made


def period(year: Year, evidence: Path, out: Path, *extra: str, heads: bool | Path = True):
    """The command over the year's period; HEADS: the scheduler's heads, others, or none."""
    head_dir = year.heads if heads is True else heads
    return compliance(*period_arguments(year, evidence, out, head_dir or None), *extra)


def copied(year: Year, tmp_path: Path) -> Path:
    target = tmp_path / "evidence"
    shutil.copytree(year.root, target)
    return target


@pytest.fixture(scope="module")
def reported(year: Year, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("period") / "period-2025"
    done = period(year, year.root, out, "--seed", "7")
    assert done.returncode == 0, done.stdout + done.stderr
    return out, (out / "report.md").read_text()


def test_the_report_states_the_population_exactly(year: Year, reported) -> None:
    _, report = reported
    assert report.splitlines()[0] == (
        "VERIFIED: 418 bundles in 3 series (daily, weekly, monthly) verify against the trust "
        "anchor, their chains and their series heads."
    )
    rows = [
        "| daily | *-*-* 09:00:00 UTC | 365 | 355 | 353 | 2 | 1 | 0 | 9 | 1 |",
        "| weekly | Mon *-*-* 10:00:00 UTC | 52 | 51 | 51 | 0 | 0 | 0 | 1 | 0 |",
        "| monthly | *-*-01 14:00:00 UTC | 12 | 11 | 11 | 0 | 0 | 0 | 1 | 0 |",
    ]
    for row in rows:
        assert row in report
    assert "\n- daily: due 2025-03-10 09:00 UTC: no run\n" in report
    assert (
        "- daily: due 2025-04-15 09:00 UTC, signed 2025-04-15 17:30 UTC: 8 h 30 min late "
        "(grace 6 h; bundle 20250415T173000.000000Z-daily)\n"
    ) in report
    assert (
        "- daily: due 2025-12-31 09:00 UTC, signed 2026-01-01 01:00 UTC: 16 h late (grace 6 h; "
        "bundle 20260101T010000.000000Z-daily), after the period's end\n"
    ) in report
    assert (
        "- daily: 9 runs due 2025-01-01 09:00 UTC to 2025-01-09 09:00 UTC: removed by retention "
        "(the signed record of removed bundles), not missing"
    ) in report
    assert (
        "- daily: bundle 20250820T150000.000000Z-daily signed 2025-08-20 15:00 UTC, after the "
        "run due 2025-08-20 09:00 UTC"
    ) in report


def test_the_report_states_each_exception_against_its_deadline(reported) -> None:
    _, report = reported
    within = (
        "| patches.security_updates | dmz-01 | high | 2025-05-06 09:00 UTC | 2025-05-09 09:00 UTC "
        "| 2025-05-10 09:00 UTC (passed, bundle 20250510T090000.000000Z-daily) | 4 d "
        "| 7 d (REQ-HARD-12 patch deadline for high severity) | within | 4 fail | no waivers |"
    )
    after = (
        "| firewall.default_drop | core-01 | critical | 2025-06-10 09:00 UTC "
        "| 2025-06-12 09:00 UTC | 2025-06-13 09:00 UTC (passed, bundle "
        "20250613T090000.000000Z-daily) | 3 d | 1 d (REQ-HARD-12's deadline for critical "
        "severity, for a check without its own) | EXCEEDED by 2 d | 3 fail | no waivers |"
    )
    waived = (
        "| integrity.aide | dmz-01 | medium | 2025-07-01 09:00 UTC | 2025-07-20 09:00 UTC "
        "| 2025-07-21 09:00 UTC (passed, bundle 20250721T090000.000000Z-daily) | 20 d "
        "| 30 d (REQ-HARD-12's deadline for medium severity, for a check without its own) "
        "| within | 10 fail, 10 waived | approved by ciso until 2025-07-10 (AIDE database "
        "rebuilt after the upgrade &lt;img src=x onerror=alert(1)&gt;): waived 10 runs, "
        "2025-07-01 09:00 UTC to 2025-07-10 09:00 UTC; expired during the episode: not waived "
        "from 2025-07-11 09:00 UTC (10 runs) |"
    )
    exceptions = report.split("## Exceptions", 1)[1].split("\n## ", 1)[0]
    assert [
        line for line in exceptions.splitlines() if line.startswith("| ") and "UTC" in line
    ] == [
        within,
        after,
        waived,
    ]


def test_the_report_states_the_attestations_and_the_key_rotation(reported) -> None:
    _, report = reported
    # A daily item attested at 08:00 counts for that day's 09:00 run: the run due in the
    # attestation's period, not one at its end.
    assert (
        "An attestation counts for the run due in its period (the UTC day, ISO week or "
        "month in which it was made) that recorded it."
    ) in report
    assert "1103 attestations counted, by alice." in report
    assert (
        "| daily.security_alerts Security alerts reviewed and each one handled "
        "| 2025-08-20 09:00 UTC | 20250820T090000.000000Z-daily | by alice: dated 2025-08-20 "
        "08:00 UTC, before the run signed 2025-08-20 09:00 UTC found the item pending, but "
        "recorded only in the later run 20250820T150000.000000Z-daily: backdated, not counted "
        "(a signed pending result stands) |"
    ) in report
    # A note is a cell of its own, whatever it says, and its HTML is text (Markdown
    # renderers show inline HTML).
    assert (
        "| daily.security_alerts | alice | 2025-09-01 08:00 UTC | 2025-09-01 09:00 UTC "
        '| handled &lt;script&gt;alert("note")&lt;/script&gt; \\| a forged column | none |'
    ) in report
    assert "<script>" not in report
    pending = report.split("### Pending past their due time", 1)[1].split("###", 1)[0]
    assert pending.count("\n| daily.") == 1  # that one, and no other
    assert (
        "| daily.security_alerts | alice | 2025-08-21 08:00 UTC | 2025-08-21 09:00 UTC "
        "| daily.security_alerts done 2025-08-21 | none |"
    ) in report
    keys = [line for line in report.splitlines() if line.startswith("| daily | ") and "..." in line]
    assert len(keys) == 2
    old, new = (line.split(" | ") for line in keys)
    assert old[2:] == [
        "171",
        "2025-01-10 09:00 UTC",
        "2025-06-30 09:00 UTC",
        "from 2024-12-01T00:00:00+00:00 to 2025-07-01T00:00:00+00:00 |",
    ]
    assert new[2:] == [
        "185",
        "2025-07-01 09:00 UTC",
        "2026-01-01 01:00 UTC",
        "from 2025-07-01T00:00:00+00:00 |",
    ]


def test_the_report_states_each_control_day_by_day(reported) -> None:
    _, report = reported
    aide = report.split("#### A.8.7 Protection against malware\n", 1)[1].split("\n\n####", 1)[0]
    assert aide.splitlines()[1:] == [
        "- Covered by: checks integrity.aide; judged by the daily runs",
        "- Runs: satisfied in 335 of 356 runs (94.1 %)",
        "- Days: 2025-01-01 to 2025-01-09 before evidence kept; 2025-01-10 to 2025-03-09 "
        "satisfied; 2025-03-10 no run; 2025-03-11 to 2025-06-30 satisfied; 2025-07-01 to "
        "2025-07-20 failed; 2025-07-21 to 2025-12-31 satisfied",
        "- Exceptions: integrity.aide on dmz-01 from 2025-07-01 09:00 UTC, fixed 2025-07-21 "
        "09:00 UTC (within its deadline)",
    ]
    # 1 to 10 July the failure was waived: the control did not operate all the same.
    assert (
        "A run fails a control when any check behind it failed there, waived or not, or "
        "could not be checked on a host;"
    ) in report
    assert (
        "The share counts the runs due in the period that judge the control, a missing run "
        "or one that does not verify as not satisfied; runs removed by retention (before "
        "the evidence kept) are not counted."
    ) in report
    alerts = report.split("#### A.5.25 ", 1)[1].split("\n\n####", 1)[0]
    assert "2025-08-20 pending" in alerts and "pending in 1 run" in alerts
    assert "- Runs: satisfied in 354 of 356 runs (99.4 %)" in alerts
    assert "#### CC6.6 " in report and "### SOC 2" in report
    assert "None" not in report
    # Reasons cite what an auditor can read here, not a document the bundle lacks.
    processing = report.split("#### PI1.1 ", 1)[1].split("\n\n####", 1)[0]
    assert "- Covered by: not applicable: Processing integrity is not among" in processing
    assert "system description" not in report


def test_the_period_bundle_verifies_and_a_changed_byte_is_named(
    year: Year, reported, tmp_path: Path
) -> None:
    out, _ = reported
    document = json.loads((out / "period.json").read_text())
    assert document["verified"] is True and document["problems"] == []
    assert document["samples"]["seed"] == 7
    picked = document["samples"]["picked"]
    assert [p["checklist"] for p in picked].count("daily") == 25
    assert [p["checklist"] for p in picked].count("weekly") == 5
    assert [p["checklist"] for p in picked].count("monthly") == 2
    for sample in picked:  # each copy is its bundle, whole
        copy, source = out / sample["copy"], year.root / sample["series"] / sample["bundle"]
        assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == sorted(
            p.relative_to(source) for p in source.rglob("*")
        )
        assert (copy / "manifest.json").read_bytes() == (source / "manifest.json").read_bytes()
    # and verifies on its own with the evidence keys, signed before the rotation or after
    for sample in (picked[0], picked[24]):
        copy = out / sample["copy"]
        assert compliance("verify", str(copy), "--key-list", str(year.key_list)).returncode == 0
    pinned = ("--trusted-key", f"{year.period_key}.pub")
    whole = compliance("verify", str(out), *pinned)
    assert whole.returncode == 0 and f"OK     {out.name}" in whole.stdout, whole.stdout
    changed = tmp_path / out.name
    shutil.copytree(out, changed)
    path = changed / picked[0]["copy"] / "results.json"
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    broken = compliance("verify", str(changed), *pinned)
    assert broken.returncode == 1
    assert f"{picked[0]['copy']}/results.json: changed" in broken.stdout
    # The page and the OSCAL results are in the manifest, and signed, like the rest.
    listed = json.loads((out / "manifest.json").read_text())["files"]
    assert {"period.json", "report.md", "report.html", "oscal-assessment-results.json"} <= set(
        listed
    )
    page = tmp_path / "page" / out.name
    shutil.copytree(out, page)
    data = bytearray((page / "report.html").read_bytes())
    data[len(data) // 2] ^= 1
    (page / "report.html").write_bytes(bytes(data))
    broken = compliance("verify", str(page), *pinned)
    assert broken.returncode == 1
    assert "report.html: changed (its SHA-256 differs from the manifest's)" in broken.stdout


def test_the_same_seed_picks_the_same_runs_and_dates_pick_theirs(
    year: Year, reported, tmp_path: Path
) -> None:
    out, _ = reported
    first = json.loads((out / "period.json").read_text())["samples"]["picked"]
    again = period(year, year.root, tmp_path / "again", "--seed", "7", "--sample", "3")
    assert again.returncode == 0, again.stderr
    picked = json.loads((tmp_path / "again" / "period.json").read_text())["samples"]["picked"]
    # Three of each checklist: not the first three of its 25, 5 and 2 - a size of 3
    # draws anew, from the same seed, the same way every time.
    assert len(picked) == 3 + 3 + 3
    assert {p["bundle"] for p in first} != {p["bundle"] for p in picked}
    repeat = period(year, year.root, tmp_path / "repeat", "--seed", "7", "--sample", "3")
    assert repeat.returncode == 0
    assert (
        json.loads((tmp_path / "repeat" / "period.json").read_text())["samples"]["picked"] == picked
    )
    dated = period(year, year.root, tmp_path / "dated", "--dates", "2025-03-10,2025-09-01")
    assert dated.returncode == 0, dated.stderr
    samples = json.loads((tmp_path / "dated" / "period.json").read_text())["samples"]
    assert [(p["checklist"], p["due"]) for p in samples["picked"]] == [
        ("weekly", "2025-03-10T10:00:00+00:00"),  # a Monday: its weekly run is there
        ("daily", "2025-09-01T09:00:00+00:00"),
        ("weekly", "2025-09-01T10:00:00+00:00"),
        ("monthly", "2025-09-01T14:00:00+00:00"),
    ]
    assert samples["not_found"] == ["2025-03-10: the daily run is missing"]
    assert (tmp_path / "dated" / "samples" / "monthly" / "20250901T140000.000000Z-monthly").is_dir()


def test_a_tampered_bundle_is_reported_and_the_period_not_verified(
    year: Year, tmp_path: Path
) -> None:
    evidence = copied(year, tmp_path)
    bundle = "20250602T090000.000000Z-daily"
    results = evidence / "daily" / bundle / "results.json"
    results.write_text(results.read_text().replace('"fail"', '"pass"').replace("dmz-01", "dmz-02"))
    done = period(year, evidence, tmp_path / "out", "--seed", "1")
    assert done.returncode == 1, done.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.splitlines()[0] == (
        f"NOT VERIFIED: daily/{bundle}: results.json: changed (its SHA-256 differs from the "
        "manifest's)"
    )
    assert f"- daily: due 2025-06-02 09:00 UTC: bundle {bundle}: results.json: changed" in report
    assert "| daily | *-*-* 09:00:00 UTC | 365 | 354 | 352 | 2 | 1 | 1 | 9 | 1 |" in report
    document = json.loads((tmp_path / "out" / "period.json").read_text())
    assert document["verified"] is False
    # So do its page and its OSCAL results, first.
    page = (tmp_path / "out" / "report.html").read_text()
    assert f'<p class="verdict bad">NOT VERIFIED: daily/{bundle}: results.json: changed' in page
    assert page.index('class="verdict bad"') < page.index("<h1>")
    metadata = json.loads((tmp_path / "out" / "oscal-assessment-results.json").read_text())[
        "assessment-results"
    ]["metadata"]
    assert metadata["remarks"].startswith(f"NOT VERIFIED: daily/{bundle}: results.json: changed")
    assert {"name": "evidence-verified", "ns": NS, "value": "false"} in metadata["props"]
    # The period bundle itself is signed and whole: it says the evidence is not.
    assert (
        compliance(
            "verify", str(tmp_path / "out"), "--trusted-key", f"{year.period_key}.pub"
        ).returncode
        == 0
    )


def test_a_truncated_series_or_none_of_its_heads_is_reported(year: Year, tmp_path: Path) -> None:
    evidence = copied(year, tmp_path)
    newest = sorted(p for p in (evidence / "daily").iterdir() if p.is_dir())[-2:]
    for bundle in newest:
        shutil.rmtree(bundle)
    done = period(year, evidence, tmp_path / "out", "--seed", "1")
    assert done.returncode == 1
    first = (tmp_path / "out" / "report.md").read_text().splitlines()[0]
    assert first.startswith(
        "NOT VERIFIED: daily: the series head (signed 2026-01-01T01:00:00+00:00) names "
        "20260101T010000.000000Z-daily as the newest of 365 bundles, but "
        "20260101T010000.000000Z-daily is not here (the newest here is "
        "20251229T090000.000000Z-daily): the newest runs were removed"
    ), first
    assert json.loads((tmp_path / "out" / "period.json").read_text())["verified"] is False
    headless = period(year, year.root, tmp_path / "headless", "--seed", "1", heads=False)
    assert headless.returncode == 1
    first = (tmp_path / "headless" / "report.md").read_text().splitlines()[0]
    assert first == (
        "NOT VERIFIED: NO SERIES HEADS for daily, weekly, monthly: whether the newest runs "
        "are all here cannot be shown (give --head or --head-dir)"
    )


def test_a_period_needs_a_trust_anchor_and_sensible_dates(year: Year, tmp_path: Path) -> None:
    base = ("period", str(year.root), "--signing-key", str(year.period_key))
    none = compliance(
        *base, "--from", "2025-01-01", "--to", "2025-01-31", "--out", str(tmp_path / "a")
    )
    assert none.returncode == 2 and "no trust anchor" in none.stderr
    anchor = ("--key-list", str(year.key_list))
    backwards = compliance(
        *base, *anchor, "--from", "2025-02-01", "--to", "2025-01-31", "--out", str(tmp_path / "b")
    )
    assert backwards.returncode == 2 and "is before --from" in backwards.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_crafted_bundle_or_option_is_named_not_a_traceback(year: Year, tmp_path: Path) -> None:
    evidence = copied(year, tmp_path)
    # A directory named as a bundle of a day that is no day: it verifies as nothing, and
    # cannot be placed among the due times either.
    crafted = evidence / "daily" / "20251340T090000.000000Z-daily"
    crafted.mkdir()
    (crafted / "run.json").write_text("{}")
    done = period(year, evidence, tmp_path / "out", "--seed", "1")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith("NOT VERIFIED: ")
    assert "\n- daily/20251340T090000.000000Z-daily: manifest or signature unreadable" in report
    negative = period(year, year.root, tmp_path / "negative", "--sample", "-1")
    assert negative.returncode == 2 and "Traceback" not in negative.stderr, negative.stderr
    assert "--sample: -1: a number of runs, 1 or more" in negative.stderr
    assert not (tmp_path / "negative").exists()


@pytest.mark.parametrize("how", ["removed", "emptied"])
def test_a_checklists_whole_series_gone_is_reported(year: Year, tmp_path: Path, how: str) -> None:
    # The scheduler's evidence holds a series per checklist: one that is gone is not a
    # smaller clean report but every run of it missing, on the first line.
    evidence = copied(year, tmp_path)
    shutil.rmtree(evidence / "weekly")
    if how == "emptied":
        (evidence / "weekly").mkdir()
    done = period(year, evidence, tmp_path / "out", "--seed", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith(
        "NOT VERIFIED: weekly: the series head (signed 2025-12-29T10:00:00+00:00) names "
        "20251229T100000.000000Z-weekly as the newest of 52 bundles, but "
        "20251229T100000.000000Z-weekly is not here (the newest here is none): the newest "
        "runs were removed; weekly: no series: "
    ), report.splitlines()[0]
    assert "| weekly | Mon *-*-* 10:00:00 UTC | 52 | 0 | 0 | 0 | 52 | 0 | 0 | 0 |" in report
    assert "- weekly: due 2025-12-29 10:00 UTC: no run" in report
    document = json.loads((tmp_path / "out" / "period.json").read_text())
    assert document["verified"] is False
    assert [s["name"] for s in document["series"]] == ["daily", "weekly", "monthly"]
    headless = period(year, evidence, tmp_path / "headless", "--seed", "1", heads=False)
    first = (tmp_path / "headless" / "report.md").read_text().splitlines()[0]
    assert headless.returncode == 1 and first.startswith(
        "NOT VERIFIED: NO SERIES HEADS for daily, weekly, monthly"
    ), first


def test_an_older_head_cannot_vouch_for_the_runs_after_it(
    year: Year, reported, tmp_path: Path
) -> None:
    # The head as the scheduler wrote it after the run of 20 December, kept by whoever
    # holds the evidence: with it, the runs after it can be removed and the series still
    # matches its head. A head signed before the period's last due run shows nothing of
    # the runs after it.
    evidence, heads = copied(year, tmp_path), tmp_path / "heads"
    shutil.copytree(year.heads, heads)
    bundles = sorted(p for p in (evidence / "daily").iterdir() if p.is_dir())
    kept = [p.name for p in bundles].index("20251220T090000.000000Z-daily")
    at = datetime.datetime(2025, 12, 20, 9, tzinfo=datetime.UTC)
    key = load_signing_key(year.new_key)
    write_head(heads / "daily.json", key, bundles[kept], 9 + kept + 1, now=at)
    for bundle in bundles[kept + 1 :]:
        shutil.rmtree(bundle)
    done = period(year, evidence, tmp_path / "out", "--seed", "1", heads=heads)
    assert done.returncode == 1, done.stdout + done.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.splitlines()[0] == (
        "NOT VERIFIED: daily: the series head was signed 2025-12-20 09:00 UTC, before the "
        "period's last run due 2025-12-31 09:00 UTC: it cannot show that no later run was "
        "removed (give the newest head)"
    )
    assert (
        f"| daily | {kept + 1} | {heads / 'daily.json'} (signed 2025-12-20 09:00 UTC): " in report
    )
    assert (tmp_path / "out" / "period.json").is_file()
    # The heads the scheduler left say when they were signed.
    _, clean = reported
    assert f"| weekly | 51 | {year.heads / 'weekly.json'} (signed 2025-12-29 10:00 UTC): " in clean


def test_the_period_bundle_goes_to_a_new_directory_outside_the_evidence(
    year: Year, tmp_path: Path
) -> None:
    evidence = copied(year, tmp_path)
    # Inside the evidence it would be a stray directory of a series (or the root taken
    # for one): the scheduler's next verification, and every later one, would fail.
    for out in (evidence / "daily" / "period-2025", evidence / "period-2025"):
        done = period(year, evidence, out, "--seed", "1")
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"{out}: inside the evidence {evidence}" in done.stderr
        assert not out.exists() and not list(out.parent.glob(".*partial"))
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    done = period(year, evidence, kept, "--seed", "1")
    assert done.returncode == 2 and f"{kept}: exists" in done.stderr
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]
    (tmp_path / "a-file").write_text("")
    unwritable = tmp_path / "a-file" / "period-2025"
    done = period(year, evidence, unwritable, "--seed", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{unwritable}: cannot write it" in done.stderr


def drawn_again(document: dict) -> list[str]:
    """The sample drawn anew from period.json alone, by the method it states."""
    samples, picked = document["samples"], []
    for name, made in document["population"].items():
        found = [d["bundle"] for d in made["dues"] if d["bundle"]]
        chooser = random.Random(f"{samples['seed']}:{name}")  # noqa: S311 - a sample
        size = samples["sizes"][name]
        picked += [found[i] for i in sorted(chooser.sample(range(len(found)), size))]
    return picked


def test_a_sample_is_drawn_again_from_what_the_period_bundle_records(
    year: Year, reported, tmp_path: Path
) -> None:
    out, report = reported
    document = json.loads((out / "period.json").read_text())
    seed = document["samples"]["seed"]  # the module's, given with --seed
    assert document["samples"]["sizes"] == {"daily": 25, "weekly": 5, "monthly": 2}
    assert document["samples"]["seed_given"] is True
    assert drawn_again(document) == [p["bundle"] for p in document["samples"]["picked"]]
    assert f"Sampling seed: {seed} (given with --seed); runs drawn: 25 daily, 5 weekly" in report
    assert f"`compliance period ... --seed {seed}` picks the same runs" in report
    # A size of its own is recorded and named: --seed alone would draw other runs.
    done = period(year, year.root, tmp_path / "three", "--seed", str(seed), "--sample", "3")
    assert done.returncode == 0, done.stderr
    three = json.loads((tmp_path / "three" / "period.json").read_text())
    assert three["samples"]["sizes"] == {"daily": 3, "weekly": 3, "monthly": 3}
    assert drawn_again(three) == [p["bundle"] for p in three["samples"]["picked"]]
    text = (tmp_path / "three" / "report.md").read_text()
    assert f"`compliance period ... --seed {seed} --sample 3` picks the same runs" in text
    # A seed the command drew says so: nobody chose it; and it prints how to draw again.
    drawn = period(year, year.root, tmp_path / "drawn", "--sample", "2")
    assert drawn.returncode == 0, drawn.stderr
    seed = json.loads((tmp_path / "drawn" / "period.json").read_text())["samples"]["seed"]
    assert (
        f"Sampling seed: {seed} (drawn at random by the command)"
        in (tmp_path / "drawn" / "report.md").read_text()
    )
    assert f"--seed {seed} --sample 2 picks the same runs" in drawn.stdout, drawn.stdout


def test_a_head_of_another_series_vouches_for_nothing(year: Year, tmp_path: Path) -> None:
    # The weekly series replaced by a copy of the daily one, and the daily head copied as
    # weekly's: chain and head match, but the head is the daily series'.
    evidence, heads = copied(year, tmp_path), tmp_path / "heads"
    shutil.copytree(year.heads, heads)
    shutil.rmtree(evidence / "weekly")
    shutil.copytree(evidence / "daily", evidence / "weekly")
    shutil.copy(heads / "daily.json", heads / "weekly.json")
    done = period(year, evidence, tmp_path / "out", "--seed", "1", heads=heads)
    assert done.returncode == 1, done.stdout + done.stderr
    first = (tmp_path / "out" / "report.md").read_text().splitlines()[0]
    assert first.startswith(
        f"NOT VERIFIED: weekly: {heads / 'weekly.json'} is the series head of daily, not of weekly"
    ), first


def test_a_sample_swapped_after_the_report_read_it_is_refused(year: Year, tmp_path: Path) -> None:
    # Between reading the evidence and copying the samples, the sampled bundle is replaced
    # by another of the same name, signed by the same key at the same time (the writer's
    # own, elsewhere): it verifies on its own, but it is not the run the report read.
    evidence = copied(year, tmp_path)
    anchor = TrustAnchor.from_options(None, year.key_list)
    catalogs = load_catalogs()
    checks = load_checks(catalogs)
    checklists = load_checklists(catalogs, checks)
    report = period_report(
        evidence,
        year.first,
        year.last,
        anchor,
        catalogs,
        checks,
        checklists,
        coverage(catalogs, checks, checklists, load_applicability(catalogs)),
        head_dir=year.heads,
        dates=[datetime.date(2025, 9, 2)],
    )
    [sample] = report.samples
    assert report.verified and len(sample.manifest_sha256) == 64
    key = load_signing_key(year.new_key)
    other = write_bundle(tmp_path / "elsewhere", "daily", [], [], {}, {}, key, now=sample.due)
    assert other.name == sample.bundle
    shutil.rmtree(evidence / "daily" / sample.bundle)
    shutil.move(other, evidence / "daily" / sample.bundle)
    with pytest.raises(PeriodError, match="not the bundle the report read"):
        write_period_bundle(report, {}, tmp_path / "out", load_signing_key(year.period_key), anchor)
    assert not (tmp_path / "out").exists()
    # Each run of the population is named with its manifest's hash: what was read.
    document = report.as_dict()
    [due] = [d for d in document["population"]["daily"]["dues"] if d["bundle"] == sample.bundle]
    assert due["manifest_sha256"] == sample.manifest_sha256


# --- report.html, the OSCAL results, the run reports' controls ---------------------------


class Elements(HTMLParser):
    """Each element's tag and attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.found.append((tag, dict(attrs)))


def test_report_html_is_one_offline_page_saying_what_report_md_says(reported) -> None:
    out, report = reported
    page = (out / "report.html").read_text()
    parser = Elements()
    parser.feed(page)
    tags = [tag for tag, _ in parser.found]
    # Nothing runs and nothing is fetched: no script, no link, no source, a policy that
    # loads nothing.
    assert "script" not in tags and "link" not in tags and "img" not in tags
    assert [a for _, attrs in parser.found for a in attrs if a in ("src", "href")] == []
    policy = [a["content"] for t, a in parser.found if a.get("http-equiv")]
    assert policy == ["default-src 'none'; style-src 'unsafe-inline'"]
    # The verdict first, as in report.md.
    assert tags.index("p") < tags.index("h1")
    first = report.splitlines()[0]
    assert f'<p class="verdict ok">{first}</p>' in page
    # Its sections, tables and lists are report.md's; what people wrote stays text.
    for line in (
        "<td>handled &lt;script&gt;alert(&quot;note&quot;)&lt;/script&gt; | a forged column</td>",
        "(AIDE database rebuilt after the upgrade &lt;img src=x onerror=alert(1)&gt;)",
        "<h2>Exceptions: failure episodes (REQ-COMP-20)</h2>",
        "<li>daily: due 2025-03-10 09:00 UTC: no run</li>",
        "<td>EXCEEDED by 2 d</td>",
        "<code>compliance period ... --seed " + "7</code> picks the same runs",  # as typed
        "<summary>1103 rows</summary>",  # the attested items: a list to look up in
    ):
        assert line in page, line
    # A row per control of each catalog, its timeline a shape per run of days.
    rows = [a["id"] for t, a in parser.found if t == "tr" and a.get("id")]
    assert sum(r.startswith("iso27001-2022-") for r in rows) == 93
    assert sum(r.startswith("soc2-tsc-") for r in rows) == 61
    aide = page.split('<tr id="iso27001-2022-A.8.7">', 1)[1].split("</tr>", 1)[0]
    shapes = [t.split("</title>")[0] for t in aide.split("<title>")[2:]]
    assert shapes == [
        "2025-01-01 to 2025-01-09: before evidence kept",
        "2025-01-10 to 2025-03-09: satisfied",
        "2025-03-10: no run",
        "2025-03-11 to 2025-06-30: satisfied",
        "2025-07-01 to 2025-07-20: failed",
        "2025-07-21 to 2025-12-31: satisfied",
    ]
    assert '<rect class="st-failed" x="362" width="40" height="14">' in aide  # 2 px a day
    assert "satisfied in 335 of 356 runs (94.1 %)" in aide
    assert "integrity.aide on dmz-01 from 2025-07-01 09:00 UTC, fixed" in aide
    # The pass rate of each framework, its dips named under it.
    assert page.count("<figure>") == 2
    caption = page.split('<figcaption id="rate-iso27001-2022">', 1)[1].split("</figcaption>")[0]
    # Every day with a missing run, a failure or a pending attestation, and only those.
    assert caption.endswith(
        "100 % on 327 of 356 days; lowest 75.0 %. Below 100 % (marked under the chart): "
        "2025-03-10 (75.0 %); 2025-05-06 to 2025-05-09 (lowest 97.8 %); 2025-06-10 to "
        "2025-06-12 (lowest 97.8 %); 2025-07-01 to 2025-07-20 (lowest 97.8 %); 2025-08-20 "
        "(95.7 %)."
    ), caption
    # A legend names every colour.
    for status in ("failed", "not verified", "no run", "pending", "before evidence kept"):
        assert f"</span>{status}<span" in page or f"</span>{status}." in page
    # A year of 154 controls stays one page of reasonable size.
    size = len(page.encode())
    print(f"\nreport.html: {size} bytes")
    assert size < 1_000_000


@pytest.mark.chromium
def test_report_html_renders_its_charts_in_headless_chromium(reported, tmp_path: Path) -> None:
    out, _ = reported
    page = out / "report.html"
    found = laid_out(tmp_path, page)
    assert found["title"] == "Evidence over the period 2025-01-01 to 2025-12-31"
    # Every chart was laid out with a size: a timeline per control, a chart per framework.
    timelines = [s for s in found["svgs"] if s["title"].endswith(" day by day")]
    charts = [s for s in found["svgs"] if s["title"].endswith(" satisfied each day")]
    assert len(timelines) == 154 and len(charts) == 2
    assert all(s["size"][0] > 0 and s["size"][1] == 14 for s in timelines)
    assert all(s["size"][0] > 700 and s["size"][1] > 100 and s["shapes"] > 3 for s in charts)
    # The days integrity.aide failed, in each control it supports: 20 days of 2 pixels, red.
    failed = [c for c in found["cells"] if c["title"] == "2025-07-01 to 2025-07-20: failed"]
    assert failed and all(c["size"] == [40, 14] for c in failed)
    assert {c["fill"] for c in failed} == {"rgb(198, 40, 40)"}
    # What an auditor reads is on the page, as text: the exception past its deadline.
    assert "firewall.default_drop\tcore-01\tcritical" in found["text"]
    assert "EXCEEDED by 2 d" in found["text"]
    # A screenshot at the first framework's controls: its chart and timelines drawn.
    shot = tmp_path / "period.png"
    taken = screenshot(tmp_path, page, shot, "iso27001-2022")
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    width, height, rows = png_rows(shot)
    assert (width, height) == (1400, 1000)
    assert len(set(rows)) > 50
    print(f"\nscreenshot: {shot}")


def test_the_period_oscal_is_one_result_per_run_and_validates(year: Year, reported) -> None:
    out, _ = reported
    document = json.loads((out / "oscal-assessment-results.json").read_text())
    validated(document)  # as every run bundle's
    made = document["assessment-results"]
    period = json.loads((out / "period.json").read_text())
    runs = [
        bundle
        for population in period["population"].values()
        for due in population["dues"]
        for bundle in ([due["bundle"]] if due["bundle"] else []) + due["additional"]
    ]
    assert len(runs) == 355 + 1 + 51 + 11
    results = {r["title"].split("(bundle ")[1].rstrip(")"): r for r in made["results"]}
    assert sorted(results) == sorted(runs)
    assert made["metadata"]["remarks"].startswith("VERIFIED: 418 bundles")
    assert {"name": "evidence-verified", "ns": NS, "value": "true"} in made["metadata"]["props"]

    def finding(bundle: str, control: str) -> dict:
        [found] = [
            f for f in results[bundle]["findings"] if f["target"]["target-id"] == f"{control}_obj"
        ]
        return found

    # The waived failure of integrity.aide fails A.8.7 in its run; it passes once fixed.
    waived = finding("20250705T090000.000000Z-daily", "A.8.7")
    assert waived["target"]["status"] == {"state": "not-satisfied", "reason": "fail"}
    assert "waived failures" in waived["remarks"]
    fixed = finding("20250721T090000.000000Z-daily", "A.8.7")
    assert fixed["target"]["status"] == {"state": "satisfied", "reason": "pass"}
    # The attestation pending at 09:00 on 20 August is not satisfied in that run, and the
    # additional run that recorded it is a result of its own.
    pending = finding("20250820T090000.000000Z-daily", "A.5.25")
    assert pending["target"]["status"] == {"state": "not-satisfied", "reason": "other"}
    later = finding("20250820T150000.000000Z-daily", "A.5.25")
    assert later["target"]["status"]["state"] == "satisfied"
    assert (
        "an additional run after the run due 2025-08-20 09:00 UTC"
        in (results["20250820T150000.000000Z-daily"]["description"])
    )
    # Each result links its run's bundle, named with its manifest's hash, whose own
    # OSCAL results observe each check and host: where the report read it, and a
    # sampled run's copy in this bundle first, each with that hash.
    resources = {r["uuid"]: r for r in made["back-matter"]["resources"]}
    sampled = {p["bundle"]: p["copy"] for p in period["samples"]["picked"]}
    dues = {d["bundle"]: d for p in period["population"].values() for d in p["dues"]}
    for bundle, result in results.items():
        assert "observations" not in result
        [href] = [link["href"] for link in result["links"]]
        assert all("related-observations" not in f for f in result["findings"])
        resource = resources[href.lstrip("#")]
        props = {p["name"]: p["value"] for p in resource["props"]}
        assert props["bundle"] == bundle
        if bundle in dues:
            assert props["manifest-sha256"] == dues[bundle]["manifest_sha256"]
        *copies, kept = resource["rlinks"]
        assert kept["href"].startswith("file:///")
        manifest = Path(urllib.parse.unquote(urllib.parse.urlparse(kept["href"]).path))
        assert manifest == year.root.resolve() / props["series"] / bundle / "manifest.json"
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
        assert kept["hashes"] == [{"algorithm": "SHA-256", "value": digest}]
        assert props["manifest-sha256"] == digest
        if bundle in sampled:
            [link] = copies
            assert link["href"] == f"{sampled[bundle]}/manifest.json"
            assert (out / link["href"]).read_bytes() == manifest.read_bytes()
            assert link["hashes"] == kept["hashes"]
            assert (out / sampled[bundle] / "assessment-results.json").is_file()
        else:
            assert copies == []
    # A year of runs stays a few megabytes: a finding per control and run, not a copy of
    # every run's observations.
    size = (out / "oscal-assessment-results.json").stat().st_size
    print(f"\noscal-assessment-results.json: {size} bytes")
    assert size < 11_000_000


def test_each_run_report_leads_from_a_control_to_its_facts(year: Year) -> None:
    # A run of the year: the firewall open on core-01, the AIDE check of dmz-01 waived.
    bundle = year.root / "daily" / "20250611T090000.000000Z-daily"
    report = (bundle / "report.md").read_text()
    iso = report.split("## Controls: ISO/IEC 27001:2022 Annex A (iso27001-2022)", 1)[1]
    firewall = [line for line in iso.splitlines() if "firewall.default_drop (core-01: fail" in line]
    assert firewall and all("| failed |" in line for line in firewall), firewall
    assert all("facts/core-01.json" in line for line in firewall)
    alerts = next(line for line in iso.splitlines() if line.startswith("| A.5.25 "))
    assert (
        "| daily.security_alerts: attested by alice at 2025-06-11T08:00:00+00:00 | checklist.json |"
    ) in alerts and "| satisfied |" in alerts
    assert "## Controls: SOC 2" in report
    waived = (year.root / "daily" / "20250705T090000.000000Z-daily" / "report.html").read_text()
    assert "integrity.aide (core-01: pass, dmz-01: waived (waiver of ciso until 2025-07-10))" in (
        waived
    )
    assert "<th>limit</th><td><code>all hosts</code>" in waived
    assert "<th>waivers_sha256</th><td><code>no waivers</code>" in waived
    assert "None" not in waived
