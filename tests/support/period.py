"""A year of checklist runs for the period report: real bundles, made by the writer the
commands use (compliance.checklist_bundle, evidence.write_bundle, the series heads),
on a clock of the test's own, from the real checks over facts recorded per host."""

from __future__ import annotations

import copy
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from compliance.attestations import load_attesters, record
from compliance.catalog import load_catalogs
from compliance.checklist_bundle import checklist_files
from compliance.checklists import load_checklists
from compliance.checks import CHECK_DIR, load_checks
from compliance.engine import Waiver, run_checks
from compliance.evidence import (
    TrustAnchor,
    generate_key,
    hash_files,
    load_signing_key,
    series_start,
    write_bundle,
    write_head,
)
from compliance.gather.runner import HostFacts
from compliance.schedule import prune
from tests.support.evidence import attesters

UTC = datetime.UTC
HOSTS = {"core-01": ["core", "monitoring", "database_backup"], "dmz-01": ["dmz"]}


def passing_facts(groups: list[str]) -> dict[str, Any]:
    """What a host of GROUPS reports when every check of the checklists passes on it."""
    facts: dict[str, Any] = {
        "system": {"container": False},
        "sshd": {
            "permitrootlogin": "no",
            "passwordauthentication": "no",
            "kbdinteractiveauthentication": "no",
            "ciphers": "aes256-gcm@openssh.com,chacha20-poly1305@openssh.com",
            "clientaliveinterval": 300,
        },
        "pam": {
            "faillock": {"deny": 5, "fail_interval": 900},
            "pwhistory": {"remember": 12},
            "su_group_only": True,
        },
        "login_defs": {"pass_max_days": 90},
        "nftables": {"input_policy": "drop", "forward_policy": "drop"},
        "network": {"address_in_segment": True},
        "time": {"synchronized": True},
        "journald": {"storage": "persistent"},
        "logs": {"retention_days": 365},
        "auditd": {
            "rule_keys": [
                "identity",
                "privileged",
                "time-change",
                "logins",
                "session",
                "perm_mod",
                "kernel_modules",
                "scope",
            ]
        },
        "aide": {"database": "/var/lib/aide/aide.db", "daily_check": True},
        "apt": {
            "lists_age_hours": 3.5,
            "overdue_security_updates": [],
            "unattended_upgrades": True,
            "unsigned_sources": [],
            "insecure_options": [],
        },
        "tls_policy": {
            "minimum_version": "TLSv1.3",
            "client_certificate_required": True,
            "ciphersuites": ["TLS_AES_256_GCM_SHA384"],
            "crl_check": "leaf",
        },
        "certificates": {"fewest_days_left": 80},
        "hardening": {"unapplied": []},
        "files": {"world_writable": []},
    }
    if "database_backup" in groups:
        facts["database_backup"] = {"ok": True, "newest_full_age_hours": 5}
        facts["dr_drills"] = {
            "newest_age_days": 10,
            "rto_seconds": 1200,
            "rpo_seconds": 60,
            "audit_verified": True,
        }
    if "monitoring" in groups:
        facts["performance"] = {
            "summary": "not measured: no traffic in the window",
            **{f"{k}_judged": False for k in ("auth", "plugin", "audit", "errors", "availability")},
        }
    if "core" in groups:
        facts |= {
            "service": {"ready": True},
            "audit": {"verified": True, "uncheckpointed": 12},
            "plugins": {"active_count": 1, "lowest_active_score": 80, "suspended": []},
            "keys": {"signing_age_days": 10, "kek_age_days": 100},
            "backup": {"kept_by": "database"},
            "replica": {"role": "active"},
        }
    return facts


# What goes wrong, on which days (inclusive), on which host: a fact set to a failing value.
Change = tuple[str, datetime.date, datetime.date, Callable[[dict[str, Any]], None]]


def _overdue(facts: dict[str, Any]) -> None:
    facts["apt"]["overdue_security_updates"] = [
        {"package": "openssl", "version": "3.0.15-1", "class": "high", "age_hours": 170}
    ]


def _open_firewall(facts: dict[str, Any]) -> None:
    facts["nftables"]["input_policy"] = "accept"


def _no_aide(facts: dict[str, Any]) -> None:
    facts["aide"]["daily_check"] = False


@dataclass
class Year:
    """The scenario, and where its evidence is."""

    root: Path  # evidence/daily, /weekly, /monthly
    heads: Path  # heads/NAME.json
    key_list: Path
    old_key: Path
    new_key: Path
    period_key: Path
    bundles: dict[str, list[Path]] = field(default_factory=dict)
    seconds: float = 0.0

    first = datetime.date(2025, 1, 1)
    last = datetime.date(2025, 12, 31)
    rotation = datetime.datetime(2025, 7, 1, tzinfo=UTC)
    missing_day = datetime.date(2025, 3, 10)
    late: ClassVar[dict[datetime.date, datetime.datetime]] = {  # due date -> its run's time
        datetime.date(2025, 4, 15): datetime.datetime(2025, 4, 15, 17, 30, tzinfo=UTC),
        datetime.date(2025, 12, 31): datetime.datetime(2026, 1, 1, 1, 0, tzinfo=UTC),
    }
    changes: tuple[Change, ...] = (
        # patches.security_updates (deadline 7 d, REQ-HARD-12): 4 days, within.
        ("dmz-01", datetime.date(2025, 5, 6), datetime.date(2025, 5, 9), _overdue),
        # firewall.default_drop (critical: 1 d): 3 days, beyond.
        ("core-01", datetime.date(2025, 6, 10), datetime.date(2025, 6, 12), _open_firewall),
        # integrity.aide (medium: 30 d), waived until 2025-07-10: 20 days.
        ("dmz-01", datetime.date(2025, 7, 1), datetime.date(2025, 7, 20), _no_aide),
    )
    # The texts people write (a waiver's reason, an attestation's note) reach the
    # reports as they were written: markup and table separators in them stay text.
    waiver = Waiver(
        "integrity.aide",
        ("dmz-01",),
        "AIDE database rebuilt after the upgrade <img src=x onerror=alert(1)>",
        "ciso",
        datetime.date(2025, 7, 10),
    )
    pending_day = datetime.date(2025, 8, 20)  # daily.security_alerts not attested in time
    marked_up_day = datetime.date(2025, 9, 1)
    marked_up_note = 'handled <script>alert("note")</script> | a forged column'
    prune_at = datetime.datetime(2026, 1, 10, tzinfo=UTC)


def period_arguments(year: Year, evidence: Path, out: Path, head_dir: Path | None) -> list[str]:
    """`compliance period`'s arguments for the year's period, as an auditor gives them
    (HEAD_DIR: the scheduler's heads, others, or None for none)."""
    return [
        "period",
        str(evidence),
        "--from",
        year.first.isoformat(),
        "--to",
        year.last.isoformat(),
        "--key-list",
        str(year.key_list),
        *(("--head-dir", str(head_dir)) if head_dir else ()),
        "--signing-key",
        str(year.period_key),
        "--out",
        str(out),
    ]


def _schedule(year: Year) -> list[tuple[datetime.datetime, str]]:
    runs = []
    day = year.first
    while day <= year.last:
        if day != year.missing_day:
            at = year.late.get(day) or datetime.datetime.combine(day, datetime.time(9), UTC)
            runs.append((at, "daily"))
        if day.weekday() == 0:
            runs.append((datetime.datetime.combine(day, datetime.time(10), UTC), "weekly"))
        if day.day == 1:
            runs.append((datetime.datetime.combine(day, datetime.time(14), UTC), "monthly"))
        day += datetime.timedelta(days=1)
    # The pending day's item is attested afterwards, dated before the run, and the
    # checklist run again that afternoon: an additional run that counts it.
    runs.append((datetime.datetime.combine(year.pending_day, datetime.time(15), UTC), "daily"))
    return sorted(runs)


def make_year(directory: Path, hosts: dict[str, list[str]] | None = None) -> Year:
    """A year (2025) of daily, weekly and monthly runs over HOSTS (name -> its groups;
    two hosts that carry every kind of check by default)."""
    hosts = HOSTS if hosts is None else hosts
    started = time.monotonic()
    year = Year(
        directory / "evidence",
        directory / "heads",
        directory / "keys.yml",
        directory / "evidence-2025a.key",
        directory / "evidence-2025b.key",
        directory / "period.key",
    )
    for path in (year.old_key, year.new_key, year.period_key):
        generate_key(path)
    year.key_list.write_text(
        "keys:\n"
        f"  - key: {year.old_key.name}.pub\n"
        "    not_before: 2024-12-01T00:00:00Z\n"
        f"    not_after: {year.rotation.isoformat()}\n"
        f"  - key: {year.new_key.name}.pub\n"
        f"    not_before: {year.rotation.isoformat()}\n"
    )
    old, new = load_signing_key(year.old_key), load_signing_key(year.new_key)
    catalogs = load_catalogs()
    checks = load_checks(catalogs)
    checklists = load_checklists(catalogs, checks)
    pinned = load_attesters(attesters(directory, "alice"))
    alice = load_signing_key(directory / "alice.key")
    checks_sha256 = hash_files(list(CHECK_DIR.glob("*.yaml")))
    rotated: set[str] = set()
    for at, name in _schedule(year):
        checklist = checklists[name]
        key = old if at < year.rotation else new
        # One attestation store per month: run_items reads every record of an item in the
        # store, and a year of them would make the test slow, not more real.
        store = directory / "attestations" / at.strftime("%Y-%m")
        morning = min(
            datetime.datetime.combine(at.date(), datetime.time(8), UTC),
            at - datetime.timedelta(hours=1),
        )
        for item in checklist.items:
            if item.attested_controls is None or at.time() == datetime.time(15):
                continue
            if at.date() == year.pending_day and item.id == "daily.security_alerts":
                continue  # not in time: the run finds it pending
            note = f"{item.id} done {at.date()}"
            if at.date() == year.marked_up_day and item.id == "daily.security_alerts":
                note = year.marked_up_note
            record(store, checklists, item.id, "alice", note, [], alice, now=morning)
        if at.date() == year.pending_day and at.time() == datetime.time(15):
            record(
                store,
                checklists,
                "daily.security_alerts",
                "alice",
                "reviewed in the morning (recorded in the afternoon)",
                [],
                alice,
                now=morning,
            )
        gathered = []
        for host, groups in hosts.items():
            facts = copy.deepcopy(passing_facts(groups))
            for who, first, last, change in year.changes:
                if who == host and first <= at.date() <= last:
                    change(facts)
            gathered.append(HostFacts(host, groups, facts, seconds=1.0))
        wanted = {c for item in checklist.items for c in item.checks}
        results = run_checks(
            [c for c in checks if c.id in wanted], gathered, [year.waiver], today=at.date()
        )
        document = {
            "hosts": [
                {"host": h.host, "groups": h.groups, "error": h.error, "seconds": h.seconds}
                for h in gathered
            ],
            "results": [r.as_dict() for r in results],
            "started": at,
        }
        run = {
            "started": at.isoformat(),
            "inventory": "inventories/lab",
            "limit": None,
            "checks_sha256": checks_sha256,
            "waivers_sha256": None,
        }
        facts = {h.host: h.facts for h in gathered}
        made = checklist_files(
            checklist, checks, catalogs, document, results, run, facts, store, pinned, at
        )
        series, head = year.root / name, year.heads / f"{name}.json"
        # The evidence key was rotated: the operator verified the series, then started
        # its head anew under the new key (--new-head), as after any key change.
        restart = key is new and name not in rotated
        if restart:
            rotated.add(name)
            head.unlink(missing_ok=True)
        start = series_start(series, head, key, new_head=restart)
        bundle = write_bundle(
            series,
            name,
            document["results"],
            document["hosts"],
            facts,
            run,
            key,
            extra=made.files,
            previous=start.previous,
            now=at,
        )
        write_head(head, key, bundle, start.count + 1, now=at)
        year.bundles.setdefault(name, []).append(bundle)
    trusted = TrustAnchor.of(old.public_key())
    for name in year.bundles:
        prune(year.root / name, 365, new, now=year.prune_at, trusted=trusted)
    year.seconds = round(time.monotonic() - started, 1)
    return year
