"""The ``compliance`` command line.

  compliance coverage [--framework F] [--gaps] [--format text|json]
      every control of ISO/IEC 27001:2022 Annex A and the SOC 2 TSC: covered by
      automated checks, by checklist attestations, or not applicable (why)
  compliance check -i INVENTORY [--limit L] [--waivers FILE]
      one read-only gathering pass per host (ansible-runner), then the checks
      [--evidence DIR --signing-key KEY [--head FILE]]   ... and write a signed
      evidence bundle, and the series head (default: under ~/.local/state)
  compliance verify BUNDLE_OR_DIR (--trusted-key PEM... | --key-list FILE)
      [--head FILE]   hashes, signature, chain, archives, the series head
  compliance verify BUNDLE_OR_DIR --trust-embedded-key   inspection only: UNVERIFIED
  compliance period EVIDENCE_DIR --from DATE --to DATE (--trusted-key PEM... |
      --key-list FILE) [--head FILE... | --head-dir DIR] [--framework F]
      [--sample N | --dates D,...] [--seed S] --signing-key KEY --out DIR
      the evidence over an audit period, verified first: a signed period bundle
  compliance checklist run daily|weekly|monthly -i INVENTORY [--store DIR]
      [--attesters FILE] [...]   the checklist's checks and signed attestations,
      a Markdown report in the bundle
  compliance attest ITEM --by NAME --note TEXT --key KEY [--file PATH]
      a person's item, signed with that person's key (file or pkcs11: URI)
  compliance forensics --incident INC --hosts H,... -i INVENTORY --evidence-root DIR
      --signing-key KEY   what the hosts are doing (read-only), as the incident's next
      signed forensic bundle in DIR/incidents/INC/ (and its archive)
  compliance keygen --key FILE                 an evidence signing key
  compliance checks [--format text|json]      the check definitions
  compliance checklists [NAME]                the daily, weekly and monthly items

Exit codes: 0 all well, 1 a finding (a coverage gap, a failed check, evidence that
does not verify - for `period`, its report's first line then says NOT VERIFIED), 2 an
error (an unreachable host, bad input, a broken catalog, check or checklist file, no
trust anchor, nothing to verify - named with what is wrong), 3 `verify
--trust-embedded-key` found no problem but proved nothing (the output's first line says
UNVERIFIED).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from compliance import __version__
from compliance.attestations import AttestationError, load_attesters, record
from compliance.catalog import Catalog, CatalogError, load_catalogs
from compliance.checklist_bundle import checklist_files, oscal_json
from compliance.checklists import NAMES, Checklist, load_checklist, load_checklists
from compliance.checks import CHECK_DIR, Check, load_checks
from compliance.coverage import coverage, load_applicability
from compliance.engine import STATUSES, Result, load_waivers, run_checks
from compliance.errors import ComplianceError
from compliance.evidence import (
    EvidenceError,
    TrustAnchor,
    archive,
    default_head,
    generate_key,
    hash_files,
    key_id,
    masked,
    series_start,
    verify_bundles,
    write_bundle,
    write_head,
)
from compliance.html_report import render
from compliance.oscal import assessment_results
from compliance.period import DEFAULT_SAMPLE, check_out, period_report, write_period_bundle
from compliance.period_html import report_files
from compliance.report_sections import control_sections
from compliance.schedule import log_alert, post_webhook, prune, schedule_state, write_metrics
from compliance.signing import generate_token_key, is_pkcs11, load_key

if TYPE_CHECKING:
    # Imported for the annotation only: gathering is imported where it is used.
    from compliance.gather.runner import HostFacts


def _loaded() -> tuple[dict[str, Catalog], list[Check], dict[str, Checklist]]:
    catalogs = load_catalogs()
    checks = load_checks(catalogs)
    checklists = load_checklists(catalogs, checks)
    return catalogs, checks, checklists


def _coverage(args: argparse.Namespace) -> int:
    catalogs, checks, checklists = _loaded()
    if args.framework and args.framework not in catalogs:
        raise CatalogError(f"--framework {args.framework}: one of {', '.join(catalogs)}")
    table = coverage(catalogs, checks, checklists, load_applicability(catalogs))
    frameworks = [args.framework] if args.framework else list(table)
    gaps = 0
    if args.format == "json":
        document = {
            framework: [
                {
                    "id": e.id,
                    "title": e.title,
                    "theme": e.theme,
                    "status": e.status,
                    "checks": e.checks,
                    "attestations": e.attestations,
                    "not_applicable": e.not_applicable,
                }
                for e in table[framework]
                if not args.gaps or e.status == "gap"
            ]
            for framework in frameworks
        }
        json.dump(document, sys.stdout, indent=2)
        print()
        gaps = sum(e.status == "gap" for f in frameworks for e in table[f])
        return 1 if gaps else 0
    for framework in frameworks:
        entries = table[framework]
        counts = Counter(e.status for e in entries)
        statuses = ("automated", "attested", "not applicable", "gap")
        summary = ", ".join(f"{counts[s]} {s}" for s in statuses if counts[s])
        print(f"{catalogs[framework].title}: {len(entries)} controls - {summary}")
        for e in entries:
            if args.gaps and e.status != "gap":
                continue
            how = {
                "automated": ", ".join(e.checks)
                + (f" + attested: {', '.join(e.attestations)}" if e.attestations else ""),
                "attested": ", ".join(e.attestations),
                "not applicable": e.not_applicable or "",
                "gap": "NOT COVERED",
            }[e.status]
            print(f"  {e.id:<8} {e.status:<15} {e.title} -- {how}")
        gaps += counts["gap"]
    return 1 if gaps else 0


def _checks(args: argparse.Namespace) -> int:
    _, checks, _ = _loaded()
    if args.format == "json":
        json.dump(
            [
                {
                    "id": c.id,
                    "title": c.title,
                    "scope": c.scope,
                    "severity": c.severity,
                    "facts": list(c.facts),
                    "controls": {f: list(i) for f, i in c.controls.items()},
                    "rule": c.rule,
                    "remediation": c.remediation,
                    "remediation_time": {
                        "hours": c.remediation_time().hours,
                        "basis": c.remediation_time().basis,
                    },
                }
                for c in checks
            ],
            sys.stdout,
            indent=2,
        )
        print()
        return 0
    for c in checks:
        controls = "; ".join(f"{f}: {', '.join(i)}" for f, i in c.controls.items())
        print(f"{c.id:<32} {c.scope:<8} {c.severity:<9} {c.title} [{controls}]")
    return 0


def _checklists(args: argparse.Namespace) -> int:
    _, _, checklists = _loaded()
    for name in [args.name] if args.name else NAMES:
        checklist = checklists[name]
        print(
            f"{checklist.title} ({name}, {checklist.schedule}): "
            f"report sections: {', '.join(checklist.report_sections)}"
        )
        for item in checklist.items:
            how = []
            if item.checks:
                how.append(f"checks: {', '.join(item.checks)}")
            if item.attested_controls is not None:
                how.append("attestation")
            print(f"  {item.id:<32} {item.title} [{'; '.join(how)}] ({item.source})")
    return 0


def _selected_checks(args: argparse.Namespace, wanted: set[str] | None = None) -> list[Check]:
    checks = load_checks(load_catalogs())  # host checks on every host, service on core hosts
    chosen = set(args.check or []) or wanted
    if chosen:
        unknown = sorted(chosen - {c.id for c in checks})
        if unknown:
            raise CatalogError(f"--check {', '.join(unknown)}: no such check")
        checks = [c for c in checks if c.id in chosen]
    return checks


def _progress(host: HostFacts, done: int, total: int) -> None:
    state = f"error: {host.error}" if host.error else "gathered"
    print(f"  [{done}/{total}] {host.host} {state} ({host.seconds} s)", file=sys.stderr)


# A checklist's reports for a run's bundle: (document, results, run, facts) -> files.
BundleExtra = Callable[
    [dict[str, Any], list[Result], dict[str, Any], dict[str, Any]], dict[str, bytes]
]


def _gather_and_check(
    args: argparse.Namespace, checks: list[Check], kind: str, extra: BundleExtra | None = None
) -> tuple[dict[str, Any], list[Result]]:
    """Gather, evaluate, optionally write the facts and a signed bundle: (document, results).
    EXTRA(document, results, run) adds files to the bundle (a checklist's reports)."""
    waivers = load_waivers(args.waivers, {c.id for c in checks})
    if bool(args.evidence) != bool(args.signing_key):
        raise EvidenceError("--evidence and --signing-key go together (a bundle is signed)")
    signing_key = load_key(args.signing_key) if args.signing_key else None
    start = None
    if args.evidence and signing_key is not None:  # together, checked above
        # Checked before gathering: a series whose head does not verify gets no new bundle.
        args.head = args.head or default_head(args.evidence)
        start = series_start(args.evidence, args.head, signing_key, args.new_head)
        if start.warning:
            print(f"warning: {start.warning}", file=sys.stderr)
            args.series_warning = start.warning
    started = datetime.datetime.now(datetime.UTC)
    print(f"gathering facts from {args.inventory} ...", file=sys.stderr)
    # Gathering needs ansible-runner (the scheduler extra); verifying, coverage and the
    # reports work with the base install, so it is imported only here.
    from compliance.gather.runner import gather

    hosts = gather(args.inventory, args.limit, forks=args.forks, progress=_progress)
    results = run_checks(checks, hosts, waivers)
    document: dict[str, Any] = {
        "hosts": [
            {"host": h.host, "groups": h.groups, "error": h.error, "seconds": h.seconds}
            for h in hosts
        ],
        "results": [r.as_dict() for r in results],
        "started": started,
    }
    if args.facts:
        facts = {h.host: masked(h.facts) for h in hosts}
        args.facts.write_text(json.dumps(facts, indent=2) + "\n")
    run = {
        "started": started.isoformat(),
        "inventory": str(args.inventory),
        "limit": args.limit,
        "checks_sha256": hash_files(list(CHECK_DIR.glob("*.yaml"))),
        "waivers_sha256": hash_files([args.waivers]) if args.waivers else None,
    }
    facts = {h.host: h.facts for h in hosts}
    added = extra(document, results, run, facts) if extra else {}
    if "report.html" not in added:
        controls = control_sections(document["results"], [], {}, load_catalogs())
        page = render(
            "compliance check", run, document["hosts"], document["results"], controls=controls
        )
        added["report.html"] = page.encode()
    if "assessment-results.json" not in added:
        oscal = assessment_results("compliance check", run, document["hosts"], document["results"])
        added["assessment-results.json"] = oscal_json(oscal)
    if start is not None and signing_key is not None:  # exactly when --evidence is given
        bundle = write_bundle(
            args.evidence,
            kind,
            document["results"],
            document["hosts"],
            facts,
            run,
            signing_key,
            extra=added,
            previous=start.previous,
        )
        write_head(args.head, signing_key, bundle, start.count + 1)
        print(f"evidence: {bundle}\nseries head: {args.head}", file=sys.stderr)
        if args.archive:
            print(f"evidence archive: {archive(bundle)}", file=sys.stderr)
    return document, results


def _check(args: argparse.Namespace) -> int:
    document, results = _gather_and_check(args, _selected_checks(args), "check")
    if args.format == "json":
        json.dump({k: v for k, v in document.items() if k != "started"}, sys.stdout, indent=2)
        print()
    else:
        for host in document["hosts"]:
            mine = [r for r in results if r.host == host["host"]]
            counts = Counter(r.status for r in mine)
            summary = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
            print(f"{host['host']} ({host['seconds']} s): {summary}")
            for r in mine:
                if r.status != "pass":
                    waiver = (
                        f" [waived by {r.waiver['approver']}]"
                        if r.status == "waived" and r.waiver is not None
                        else ""
                    )
                    print(f"  {r.status.upper():<6} {r.check} ({r.severity}){waiver}: {r.detail}")
                    if r.rationale:
                        print(f"         why: {r.rationale}")
    if any(r.status == "error" for r in results):
        return 2
    return 1 if any(r.status == "fail" for r in results) else 0


def _checklist_run(args: argparse.Namespace) -> int:
    catalogs = load_catalogs()
    checks = load_checks(catalogs)
    checklist = load_checklist(args.name, catalogs, checks)
    wanted = {c for item in checklist.items for c in item.checks}
    outcome: dict = {}

    attesters = load_attesters(args.attesters) if args.attesters else None

    def report(
        document: dict[str, Any], results: list[Result], run: dict[str, Any], facts: dict[str, Any]
    ) -> dict[str, bytes]:
        made = checklist_files(
            checklist, checks, catalogs, document, results, run, facts, args.store, attesters
        )
        outcome["items"], outcome["markdown"] = made.items, made.markdown
        return made.files

    _gather_and_check(args, _selected_checks(args, wanted), args.name, extra=report)
    if args.format == "json":
        print(json.dumps([i.as_dict() for i in outcome["items"]], indent=2))
    else:
        print(outcome["markdown"])
    statuses = {i.status for i in outcome["items"]}
    if "error" in statuses:
        return 2
    return 1 if statuses & {"fail", "pending"} else 0


def _attest(args: argparse.Namespace) -> int:
    catalogs = load_catalogs()
    checklists = load_checklists(catalogs, load_checks(catalogs))
    key = load_key(args.key)
    certificate = None
    if args.certificate:
        try:
            certificate = x509.load_pem_x509_certificate(args.certificate.read_bytes())
        except (OSError, ValueError) as error:
            raise AttestationError(
                f"{args.certificate}: not a PEM certificate ({error})"
            ) from error
    path = record(
        args.store,
        checklists,
        args.item,
        args.by,
        args.note,
        args.file or [],
        key,
        certificate=certificate,
    )
    print(f"attestation recorded: {path} (signed by {args.by}'s key {key_id(key.public_key())})")
    return 0


def _forensics(args: argparse.Namespace) -> int:
    """The hosts' forensic facts as the incident's next signed bundle; its place and hash."""
    from compliance.forensics import collect

    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    key = load_key(args.signing_key)
    made = collect(args.inventory, args.incident, hosts, args.evidence_root, key, args.forks)
    answer = {
        "bundle": str(made.bundle),
        "archive": str(made.archive),
        "manifest_sha256": made.manifest_sha256,
        "errors": made.errors,
    }
    json.dump(answer, sys.stdout, indent=2)
    print()
    return 1 if made.errors else 0


def _keygen(args: argparse.Namespace) -> int:
    if is_pkcs11(args.key):
        if args.public_key is None:
            raise EvidenceError("a token key needs --public-key PATH (auditors verify with it)")
        uri, public = generate_token_key(args.key)
        pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        args.public_key.write_bytes(pem)
        print(
            f"signing key made on the token (not extractable): {uri}\n"
            f"public key {args.public_key}, key id {key_id(public)}"
        )
        return 0
    kid = generate_key(Path(args.key))
    print(f"signing key written: {args.key} (0600), public key {args.key}.pub, key id {kid}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    anchor = TrustAnchor.from_options(args.trusted_key, args.key_list, args.trust_embedded_key)
    outcome = verify_bundles(args.target, anchor, args.head)
    if outcome.unverified:
        print(
            "UNVERIFIED: no trust anchor - each bundle's own embedded key was trusted, so "
            "whoever wrote these files could have signed them (exit 3 at best)"
        )
    bad = 0
    for check in outcome.checks:
        if check.problems:
            bad += 1
            print(f"FAILED {check.bundle}:")
            for problem in check.problems:
                print(f"  {problem}")
        elif outcome.unverified:
            print(f"UNVERIFIED {check.bundle} (carries key {check.key_id})")
        else:
            print(f"OK     {check.bundle} (signed by trusted key {check.key_id})")
    for label, problems in (
        ("CHAIN", outcome.chain),
        ("SERIES", outcome.series),
        ("HEAD", outcome.head),
    ):
        for problem in problems:
            print(f"{label:<6} {problem}")
    if args.head is not None and not outcome.head:
        print(f"HEAD   {args.head}: the series' newest runs are all here")
    print(
        f"{len(outcome.checks)} bundles, {bad} with problems, {len(outcome.chain)} breaks "
        f"in the chain, {len(outcome.series) + len(outcome.head)} series problems"
    )
    if outcome.problems:
        return 1
    return 3 if outcome.unverified else 0


def _period(args: argparse.Namespace) -> int:
    """The evidence over an audit period, verified first, as a signed period bundle."""
    anchor = TrustAnchor.from_options(args.trusted_key, args.key_list)
    if args.sample is not None and args.dates:
        raise EvidenceError("--sample picks runs at random, --dates on given days: one of them")
    catalogs, checks, checklists = _loaded()
    frameworks = [_framework(args.framework, catalogs)] if args.framework else None
    signing_key = load_key(args.signing_key)  # before the work: a key that fails, fails now
    check_out(args.out, args.evidence)
    report = period_report(
        args.evidence,
        args.first,
        args.last,
        anchor,
        catalogs,
        checks,
        checklists,
        coverage(catalogs, checks, checklists, load_applicability(catalogs)),
        heads=args.head or [],
        head_dir=args.head_dir,
        frameworks=frameworks,
        sample=args.sample,
        dates=args.dates,
        seed=args.seed,
    )
    if report.seed is not None and args.seed is None:
        print(
            f"sample seed: {report.seed} (recorded; {report.sample_options()} picks the same runs)"
        )
    bundle = write_period_bundle(report, report_files(report), args.out, signing_key, anchor)
    print(report.verdict())
    print(f"period bundle: {bundle} ({len(report.samples)} sampled runs)")
    return 0 if report.verified else 1


def _framework(name: str, catalogs: dict[str, Catalog]) -> str:
    """A catalog's id, or the start of exactly one (soc2 for soc2-tsc)."""
    if name in catalogs:
        return name
    matches = [f for f in catalogs if f.startswith(name)]
    if len(matches) != 1:
        raise CatalogError(f"--framework {name}: one of {', '.join(catalogs)}")
    return matches[0]


def _date(value: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{value!r}: a date, YYYY-MM-DD") from error


def _count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{value}: a number of runs, 1 or more")
    return count


def _dates(value: str) -> list[datetime.date]:
    return [_date(part.strip()) for part in value.split(",") if part.strip()]


def _alert(
    args: argparse.Namespace, event: str, checklist: str, message: str, **details: object
) -> None:
    log_alert(message)
    if args.webhook:
        payload = {
            "event": event,
            "checklist": checklist,
            "message": message,
            "host": socket.gethostname(),
            **details,
            "at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        problem = post_webhook(args.webhook, payload)
        if problem:
            log_alert(problem)


def _schedule_run(args: argparse.Namespace) -> int:
    """One scheduled checklist run: the run and its bundle, retention, metrics, alerts."""
    if not args.signing_key:
        raise EvidenceError("--signing-key is required: every scheduled run is signed")
    args.evidence = args.evidence_root / args.name
    if args.head is None and args.head_dir is not None:
        args.head = args.head_dir / f"{args.name}.json"
    try:
        code = _checklist_run(args)
    except ComplianceError as error:
        print(f"compliance schedule run: error: {error}", file=sys.stderr)
        code = 2
    newest = max(args.evidence.glob("*/checklist.json"), default=None)
    items = json.loads(newest.read_text()) if newest else []
    counts = Counter(i["status"] for i in items)
    bundle = newest.parent.name if newest else None
    gap = getattr(args, "series_warning", None)
    if gap:
        _alert(args, "evidence_gap", args.name, f"the {args.name} evidence series: {gap}")
        code = max(code, 1)
    trusted = TrustAnchor.from_options(args.trusted_key) if args.trusted_key else None
    removed = prune(args.evidence, args.keep_days, load_key(args.signing_key), trusted=trusted)
    if removed:
        print(
            f"retention: removed {len(removed)} bundles older than {args.keep_days} days",
            file=sys.stderr,
        )
    # Pending attestations are the normal state of a morning run, not an alert.
    status = 2 if code == 2 else int(bool(counts["fail"] or counts["error"] or gap))
    if args.metrics:
        label = f'{{checklist="{args.name}"}}'
        now = datetime.datetime.now(datetime.UTC).timestamp()
        write_metrics(
            args.metrics,
            {
                f"securecore_compliance_last_run_timestamp_seconds{label}": now,
                f"securecore_compliance_last_run_status{label}": status,
                f"securecore_compliance_run_missed{label}": 0,
            },
        )
    if status:
        what = "could not be completed" if status == 2 else "found failures"
        _alert(
            args,
            "checklist_failed" if status == 1 else "checklist_error",
            args.name,
            f"the {args.name} checklist {what} ({counts['fail']} failed, "
            f"{counts['error']} errors, {counts['pending']} pending; bundle {bundle})",
            status=status,
            bundle=bundle,
            items=dict(counts),
        )
    return status


def _schedule_status(args: argparse.Namespace) -> int:
    """Missed runs: each checklist's newest bundle against its period."""
    marker = args.evidence_root / ".installed"
    installed = (
        datetime.datetime.fromtimestamp(marker.stat().st_mtime, datetime.UTC)
        if marker.is_file()
        else datetime.datetime.now(datetime.UTC)
    )
    anchor = None
    if args.trusted_key or args.key_list:
        anchor = TrustAnchor.from_options(args.trusted_key, args.key_list)
    missed = 0
    broken = 0
    for name in args.checklist or NAMES:
        if anchor is not None and (args.evidence_root / name).is_dir():
            broken += _series_verified(args, name, anchor)
        state = schedule_state(args.evidence_root, name, installed)
        print(f"{name:<8} {'MISSED' if state.missed else 'ok':<7} {state.detail}")
        if args.metrics:
            write_metrics(
                args.metrics,
                {f'securecore_compliance_run_missed{{checklist="{name}"}}': int(state.missed)},
            )
        if state.missed:
            missed += 1
            _alert(
                args, "checklist_missed", name, f"missed run: {state.detail}", newest=state.newest
            )
    return 1 if missed or broken else 0


def _series_verified(args: argparse.Namespace, name: str, anchor: TrustAnchor) -> int:
    """1 (and an alert) when checklist NAME's series does not verify against the trust
    anchor and, given --head-dir, its series head."""
    head = args.head_dir / f"{name}.json" if args.head_dir else None
    try:
        problems = verify_bundles(args.evidence_root / name, anchor, head).problems
    except EvidenceError as error:
        problems = [str(error)]
    print(
        f"{name:<8} {'BROKEN' if problems else 'verified':<8} "
        f"{problems[0] if problems else 'evidence series and head verify'}"
    )
    if args.metrics:
        write_metrics(
            args.metrics,
            {f'securecore_compliance_evidence_broken{{checklist="{name}"}}': int(bool(problems))},
        )
    if problems:
        _alert(
            args,
            "evidence_broken",
            name,
            f"the {name} evidence series does not verify "
            f"({len(problems)} problems; first: {problems[0]})",
        )
    return int(bool(problems))


def _trust_options(command: argparse.ArgumentParser, key_list: bool = True) -> None:
    command.add_argument(
        "--trusted-key",
        "--public-key",
        type=Path,
        action="append",
        help="an evidence public key to trust (PEM; repeatable)",
    )
    if key_list:
        command.add_argument(
            "--key-list",
            type=Path,
            help="trusted keys with validity periods (YAML/JSON: keys: "
            "[{key, not_before, not_after}])",
        )


def _alert_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--evidence-root",
        type=Path,
        required=True,
        help="one evidence directory per checklist under it",
    )
    command.add_argument(
        "--head-dir", type=Path, help="the series heads (NAME.json): outside the evidence root"
    )
    command.add_argument(
        "--metrics",
        type=Path,
        help="Prometheus textfile to update (node_exporter textfile collector)",
    )
    command.add_argument(
        "--webhook",
        default=os.environ.get("COMPLIANCE_WEBHOOK_URL") or None,
        help="POST alerts here as JSON (default: $COMPLIANCE_WEBHOOK_URL)",
    )


def _host_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("-i", "--inventory", required=True, help="the playbooks' inventory")
    command.add_argument("--limit", help="hosts or groups, comma-separated")
    command.add_argument("--check", action="append", help="only this check (repeatable)")
    command.add_argument("--waivers", type=Path, help="waivers (YAML)")
    command.add_argument("--facts", type=Path, help="also write the gathered facts (JSON) here")
    command.add_argument("--forks", type=int, default=8, help="hosts gathered at once")
    command.add_argument("--format", choices=("text", "json"), default="text")
    command.add_argument("--evidence", type=Path, help="write a signed evidence bundle here")
    command.add_argument(
        "--signing-key", help="ECDSA P-256 key: a file, or pkcs11:token=...;object=... (a token)"
    )
    command.add_argument("--archive", action="store_true", help="also write BUNDLE.tar.gz")
    command.add_argument(
        "--head",
        type=Path,
        help="the signed series head, kept outside the evidence directory "
        "(default: $XDG_STATE_HOME or ~/.local/state/"
        "securecore-compliance/heads/)",
    )
    command.add_argument(
        "--new-head", action="store_true", help="start a series head for evidence that has none yet"
    )


def _checklist_run_options(command: argparse.ArgumentParser) -> None:
    """What `checklist run` and `schedule run` (a checklist run on a timer) both take."""
    command.add_argument("name", choices=NAMES)
    _host_options(command)
    command.add_argument(
        "--store",
        type=Path,
        default=Path("evidence/attestations"),
        help="the attestation store (default: evidence/attestations)",
    )
    command.add_argument(
        "--attesters",
        type=Path,
        help="who may attest: NAME -> public key (YAML); without it no attestation counts",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compliance",
        description="Check ISO 27001:2022 and SOC 2 controls and produce signed evidence.",
    )
    parser.add_argument("--version", action="version", version=f"compliance {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    cover = commands.add_parser("coverage", help="how every control is covered (exit 1: a gap)")
    cover.add_argument("--framework", help="one framework (iso27001-2022, soc2-tsc)")
    cover.add_argument("--gaps", action="store_true", help="list only controls not covered")
    cover.add_argument("--format", choices=("text", "json"), default="text")
    cover.set_defaults(handler=_coverage)
    checks = commands.add_parser("checks", help="the check definitions")
    checks.add_argument("--format", choices=("text", "json"), default="text")
    checks.set_defaults(handler=_checks)
    check = commands.add_parser(
        "check", help="gather facts from the hosts (read-only) and run the checks"
    )
    _host_options(check)
    check.set_defaults(handler=_check)
    checklist = commands.add_parser("checklist", help="run a checklist")
    checklist_actions = checklist.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = checklist_actions.add_parser(
        "run", help="its checks on the hosts and its attestations; a report and evidence"
    )
    _checklist_run_options(run)
    run.set_defaults(handler=_checklist_run)
    attest = commands.add_parser("attest", help="record a person's checklist item")
    attest.add_argument("item", help="the checklist item, e.g. daily.security_alerts")
    attest.add_argument("--by", required=True, help="who did it")
    attest.add_argument(
        "--key",
        required=True,
        help="that person's signing key: a file, or pkcs11:token=...;object=...",
    )
    attest.add_argument(
        "--certificate",
        type=Path,
        help="that person's certificate for --key (PEM; its common name is "
        "--by), for attesters pinned by certificate authority",
    )
    attest.add_argument("--note", required=True, help="what was done and found")
    attest.add_argument("--file", type=Path, action="append", help="a file shown (hashed)")
    attest.add_argument(
        "--store",
        type=Path,
        default=Path("evidence/attestations"),
        help="the attestation store (default: evidence/attestations)",
    )
    attest.set_defaults(handler=_attest)
    keygen = commands.add_parser("keygen", help="make an evidence signing key (file, 0600)")
    keygen.add_argument(
        "--key",
        required=True,
        help="a file to write, or pkcs11:token=... to make the key on a token",
    )
    keygen.add_argument(
        "--public-key", type=Path, help="where to write the public key (PEM) of a token key"
    )
    keygen.set_defaults(handler=_keygen)
    forensics = commands.add_parser(
        "forensics", help="an incident's forensic evidence from its hosts (read-only), signed"
    )
    forensics.add_argument("--incident", required=True, help="INC-YYYY-NNNN")
    forensics.add_argument("--hosts", required=True, help="the hosts, comma-separated")
    forensics.add_argument("-i", "--inventory", type=Path, required=True)
    forensics.add_argument("--forks", type=int, default=8)
    forensics.add_argument(
        "--evidence-root", type=Path, required=True, help="the series go in DIR/incidents/INC/"
    )
    forensics.add_argument(
        "--signing-key", required=True, help="the evidence key: a file or a pkcs11: URI"
    )
    forensics.set_defaults(handler=_forensics)
    verify = commands.add_parser(
        "verify", help="check evidence bundles offline: hashes, signature, the chain"
    )
    verify.add_argument(
        "target", type=Path, help="a bundle, its .tar.gz, or a directory of bundles"
    )
    _trust_options(verify)
    verify.add_argument(
        "--trust-embedded-key",
        action="store_true",
        help="no anchor: trust each bundle's own key - proves nothing; output "
        "marked UNVERIFIED, exit 3",
    )
    verify.add_argument("--head", type=Path, help="the series head: a missing newest run is found")
    verify.set_defaults(handler=_verify)
    period = commands.add_parser(
        "period",
        help="the evidence over an audit period (population, exceptions, controls, samples), "
        "verified first: a signed period bundle",
    )
    period.add_argument(
        "evidence",
        type=Path,
        help="one evidence series, or one directory of bundles per checklist (daily, ...)",
    )
    period.add_argument("--from", dest="first", type=_date, required=True, help="YYYY-MM-DD")
    period.add_argument(
        "--to", dest="last", type=_date, required=True, help="YYYY-MM-DD (included)"
    )
    _trust_options(period)
    period.add_argument(
        "--head",
        type=Path,
        action="append",
        help="a series head (repeatable; each names its series)",
    )
    period.add_argument(
        "--head-dir", type=Path, help="the series heads as the scheduler keeps them (NAME.json)"
    )
    period.add_argument("--framework", help="one framework (iso27001-2022, soc2)")
    period.add_argument(
        "--sample",
        type=_count,
        help="runs to sample per checklist (default: "
        + ", ".join(f"{n} {name}" for name, n in DEFAULT_SAMPLE.items())
        + ")",
    )
    period.add_argument("--dates", type=_dates, help="sample the runs due on these dates (D,...)")
    period.add_argument(
        "--seed", type=int, help="the sampling seed (default: a random one, printed and recorded)"
    )
    period.add_argument(
        "--signing-key",
        required=True,
        help="signs the period bundle: a file, or pkcs11:token=...;object=...",
    )
    period.add_argument(
        "--out", type=Path, required=True, help="the period bundle (a new directory)"
    )
    period.set_defaults(handler=_period)
    schedule = commands.add_parser("schedule", help="what the scheduler's timers run")
    schedule_actions = schedule.add_subparsers(dest="action", required=True, metavar="ACTION")
    scheduled = schedule_actions.add_parser(
        "run", help="a checklist run into EVIDENCE_ROOT/NAME, with retention, metrics, alerts"
    )
    _checklist_run_options(scheduled)
    scheduled.add_argument(
        "--keep-days", type=int, default=365, help="remove bundles older than this (default 365)"
    )
    _alert_options(scheduled)
    _trust_options(scheduled, key_list=False)  # a rotated-out key's bundles still age out
    scheduled.set_defaults(handler=_schedule_run)
    status = schedule_actions.add_parser("status", help="find missed runs (exit 1: one missed)")
    status.add_argument("--checklist", action="append", choices=NAMES)
    _alert_options(status)
    _trust_options(status)
    status.set_defaults(handler=_schedule_status)
    lists = commands.add_parser("checklists", help="the daily, weekly and monthly items")
    lists.add_argument("name", nargs="?", choices=NAMES)
    lists.set_defaults(handler=_checklists)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_usage(sys.stderr)
        print("compliance: a command is required (see 'compliance --help')", file=sys.stderr)
        return 2
    try:
        return int(args.handler(args))
    except ComplianceError as error:
        print(f"compliance: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
