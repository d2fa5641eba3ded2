"""`securecore incident`: the incident records the core keeps (REQ-IR-1 to REQ-IR-4).

securecore incident list | show INC
securecore incident open --title T --severity S --impact I --source SRC [--summary T]
securecore incident update INC [--phase P] [--severity S] [--impact I] [--scope T]
                               [--cause T] [--note T] [--fix T] [--follow-up T]
securecore incident action INC ACTION [--host H ...] [--outcome O] [--summary T]
                               [--bundle DIR --trusted-key PEM | --artifact-sha256 HEX
                                --artifact-name NAME --artifact-kind KIND]
securecore incident verify INC --stage S --method M --summary T (--passed | --failed)
                               [--bundle DIR --trusted-key PEM]
securecore incident close INC --summary T
securecore incident report INC --out DIR     the post-incident report of a closed incident:
                                             DIR/INC.md and DIR/INC.html

A client of the admin API like the other operator commands (securecore.cli.admin):
the same certificate, --url and --local options; the service audits every change.

A bundle (--bundle) is checked here, where it is, before it is linked: its
hashes, its signature against the trusted evidence key and, for a
verification, the compliance results it holds. What reaches the record is
the SHA-256 of its manifest (the bundle's identity, which `compliance verify`
checks anyone's copy against), its name and kind, and the checks' counts. Any
other artifact of an action (a backup archive) is linked by its own SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from securecore.cli.admin import AdminError, _call, _connection_options, _show
from securecore.incidents.model import (
    IMPACTS,
    PHASES,
    SEVERITIES,
    SOURCES,
    VERIFICATION_METHODS,
    VERIFIED_STAGES,
)


def _path(incident: str, *rest: str) -> str:
    return "/".join(["/v1/admin/incidents", quote(incident, safe=""), *rest])


def checked_bundle(bundle: Path, trusted_keys: list[Path] | None) -> dict[str, Any]:
    """BUNDLE verified against TRUSTED_KEYS; its manifest hash, name, kind and the
    counts of its compliance results (AdminError naming every problem otherwise)."""
    # The evidence format is the compliance package's; imported only when a bundle is linked.
    from compliance.errors import ComplianceError
    from compliance.evidence import TrustAnchor, verify_bundles

    if not trusted_keys:
        raise AdminError(
            "--bundle needs --trusted-key: the evidence public key it must verify with"
        )
    if not (bundle / "manifest.json").is_file():
        raise AdminError(f"{bundle}: not an evidence bundle (no manifest.json)")
    try:
        outcome = verify_bundles(bundle, TrustAnchor.from_options(trusted_keys))
    except ComplianceError as error:
        raise AdminError(f"{bundle}: {error}") from error
    if outcome.problems:
        raise AdminError(f"{bundle} does not verify: " + "; ".join(outcome.problems))
    linked: dict[str, Any] = {
        "artifact_name": bundle.resolve().name,
        "artifact_sha256": hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest(),
    }
    run = bundle / "run.json"
    if run.is_file():
        linked["artifact_kind"] = str(json.loads(run.read_bytes()).get("kind", "compliance"))[:32]
    results = bundle / "results.json"
    if results.is_file():
        statuses = [r.get("status") for r in json.loads(results.read_bytes()).get("results", [])]
        linked["checks_passed"] = sum(s in ("pass", "waived") for s in statuses)
        linked["checks_failed"] = sum(s == "fail" for s in statuses)
    return linked


def _report(args: argparse.Namespace) -> int:
    # The report's form is the compliance package's (its HTML page and tables).
    from compliance.incident_report import IncidentReportError, html, markdown

    if args.out is None:
        raise AdminError("report needs --out DIR: where INC.md and INC.html are written")
    record = _call(args, "GET", _path(args.incident))
    try:
        made = {".md": markdown(record), ".html": html(record)}
    except IncidentReportError as error:
        raise AdminError(str(error)) from error
    args.out.mkdir(parents=True, exist_ok=True)
    for suffix, text in made.items():
        (args.out / f"{record['id']}{suffix}").write_text(text, encoding="utf-8")
    return _show({"report": [str(args.out / f"{record['id']}{s}") for s in made]})


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _incident(args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        return _show(_call(args, "GET", "/v1/admin/incidents"))
    if action == "open":
        fields = _given(args, ("title", "severity", "impact", "source", "summary"))
        missing = [f"--{n}" for n in ("title", "severity", "impact", "source") if n not in fields]
        if missing:
            raise AdminError(f"open needs {', '.join(missing)}")
        return _show(_call(args, "POST", "/v1/admin/incidents", fields))
    if not args.incident:
        raise AdminError(f"{action} needs the incident's id (INC-YYYY-NNNN)")
    if action == "show":
        return _show(_call(args, "GET", _path(args.incident)))
    if action == "update":
        change = _given(
            args, ("phase", "severity", "impact", "scope", "cause", "note", "fix", "follow_up")
        )
        return _show(_call(args, "POST", _path(args.incident, "update"), change))
    if action == "report":
        return _report(args)
    if action == "close":
        if not args.summary:
            raise AdminError("close needs --summary: how the incident ended")
        return _show(_call(args, "POST", _path(args.incident, "close"), {"summary": args.summary}))
    linked = checked_bundle(args.bundle, args.trusted_key) if args.bundle else {}
    if action == "action":
        if not args.what:
            raise AdminError("action needs what was done (contain, release, collect, ...)")
        body = {"action": args.what, **_given(args, ("outcome", "summary"))}
        if args.host:
            body["hosts"] = args.host
        if args.artifact_sha256:
            if linked:
                raise AdminError("give --bundle or --artifact-sha256, not both")
            linked = {
                "artifact_sha256": args.artifact_sha256,
                **_given(args, ("artifact_name", "artifact_kind")),
            }
        body.update({k: v for k, v in linked.items() if k.startswith("artifact_")})
        return _show(_call(args, "POST", _path(args.incident, "actions"), body))
    # verify
    if args.passed is None or not args.stage or not args.method or not args.summary:
        raise AdminError("verify needs --stage, --method, --summary and --passed or --failed")
    if args.passed and linked.get("checks_failed"):
        raise AdminError(
            f"{args.bundle}: {linked['checks_failed']} checks failed in it; "
            "a passed verification cannot rest on it"
        )
    body = {
        "stage": args.stage,
        "method": args.method,
        "summary": args.summary,
        "passed": args.passed,
        **linked,
    }
    return _show(_call(args, "POST", _path(args.incident, "verifications"), body))


def configure(name: str, command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "action",
        choices=["list", "show", "open", "update", "action", "verify", "close", "report"],
    )
    command.add_argument("incident", nargs="?", help="INC-YYYY-NNNN")
    command.add_argument("what", nargs="?", help="action: what was done (contain, collect, ...)")
    command.add_argument("--title")
    command.add_argument("--severity", choices=SEVERITIES)
    command.add_argument("--impact", choices=IMPACTS)
    command.add_argument("--source", choices=SOURCES)
    command.add_argument("--summary")
    command.add_argument("--phase", choices=PHASES)
    command.add_argument("--scope", help="what is affected")
    command.add_argument("--cause")
    command.add_argument("--note")
    command.add_argument("--fix", help="a fix made (added to the list)")
    command.add_argument("--follow-up", dest="follow_up", help="a follow-up (added to the list)")
    command.add_argument("--host", action="append", help="a host the action was on (repeatable)")
    command.add_argument("--outcome", choices=["success", "failure", "unchanged"])
    command.add_argument("--stage", choices=VERIFIED_STAGES)
    methods = sorted({m for ms in VERIFICATION_METHODS.values() for m in ms})
    command.add_argument("--method", choices=methods)
    command.add_argument("--passed", action="store_true", default=None)
    command.add_argument("--failed", dest="passed", action="store_false")
    command.add_argument("--bundle", type=Path, help="an evidence bundle to link (verified first)")
    command.add_argument(
        "--artifact-sha256", help="action: the SHA-256 of what it produced (a backup archive)"
    )
    command.add_argument("--artifact-name", help="action: its file name")
    command.add_argument("--artifact-kind", help="action: what it is (host-backup, ...)")
    command.add_argument(
        "--trusted-key", type=Path, action="append", help="the evidence public key (PEM)"
    )
    command.add_argument("--out", type=Path, help="report: the directory to write it to")
    command.set_defaults(handler=_incident)
    _connection_options(command)
