"""Checks evaluated against gathered facts, with waivers: one result per check and host.

Statuses: `pass`, `fail`, `waived` (a failure an unexpired waiver covers - still
shown, with the waiver), `error` (the host could not be reached or gathered:
never a pass), `not_applicable` (the check's own `not_applicable` rule holds for
the host's gathered facts: the detail gives the reason, the facts that decided
it and what the check itself found; REQ-COMP-17). A waiver that expired no
longer applies and the result says so.
Each result carries its check's rationale and the requirement ids it begins with,
so every report made from the results can say why the check exists.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compliance.catalog import CatalogError, load_yaml
from compliance.checks import Check
from compliance.gather.runner import HostFacts
from compliance.rules import evaluate

STATUSES = ("error", "fail", "waived", "pass", "not_applicable")  # the worst first


@dataclass(frozen=True)
class Waiver:
    check: str
    hosts: tuple[str, ...]  # host names or groups; "all" for every host
    reason: str
    approver: str
    expires: datetime.date

    def covers(self, check: str, host: str, groups: list[str]) -> bool:
        scope = set(self.hosts)
        chosen = "all" in scope or host in scope or bool(scope & set(groups))
        return check == self.check and chosen


@dataclass
class Result:
    check: str
    host: str
    status: str
    detail: str
    severity: str
    controls: dict[str, list[str]]
    waiver: dict[str, Any] | None = None
    rationale: str = ""
    requirements: list[str] = field(default_factory=list)  # the REQ ids it verifies
    # How soon a failure must be fixed, as the check said when it ran ({"hours",
    # "basis"}): signed with the run, so a later edit of the check cannot move the
    # deadline of a failure already found (REQ-COMP-20).
    remediation: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_waivers(path: str | Path | None, known_checks: set[str]) -> list[Waiver]:
    if path is None:
        return []
    path = Path(path)
    data = load_yaml(path, "waivers") or []
    if not isinstance(data, list):
        raise CatalogError(f"{path}: a list of waivers")
    waivers = []
    for index, item in enumerate(data):
        where = f"{path}: [{index}]"
        if not isinstance(item, dict):
            raise CatalogError(f"{where}: a waiver is a mapping")
        required = ("check", "hosts", "reason", "approver", "expires")
        missing = [k for k in required if not item.get(k)]
        if missing:
            raise CatalogError(f"{where}: {', '.join(missing)}: required")
        if item["check"] not in known_checks:
            raise CatalogError(f"{where}: no check {item['check']!r}")
        expires = item["expires"]
        if isinstance(expires, str):
            try:
                expires = datetime.date.fromisoformat(expires)
            except ValueError as error:
                raise CatalogError(f"{where}: expires {expires!r}: a date (YYYY-MM-DD)") from error
        if not isinstance(expires, datetime.date):
            raise CatalogError(f"{where}: expires: a date (YYYY-MM-DD)")
        hosts = item["hosts"] if isinstance(item["hosts"], list) else [item["hosts"]]
        waivers.append(
            Waiver(
                item["check"],
                tuple(map(str, hosts)),
                str(item["reason"]),
                str(item["approver"]),
                expires,
            )
        )
    return waivers


def applies(check: Check, host: HostFacts) -> bool:
    return "all" in check.groups or bool(set(check.groups) & set(host.groups))


def run_checks(
    checks: list[Check],
    hosts: list[HostFacts],
    waivers: list[Waiver],
    today: datetime.date | None = None,
) -> list[Result]:
    today = today or datetime.date.today()
    results = []
    # Each check's deadline, worked out once: the same for every host it runs on.
    deadlines = {c.id: c.remediation_time() for c in checks}
    for host in hosts:
        for check in checks:
            if not applies(check, host):
                continue
            controls = {f: list(ids) for f, ids in check.controls.items()}
            why = check.rationale.strip()
            deadline = deadlines[check.id]
            remediation = {"hours": deadline.hours, "basis": deadline.basis}
            if host.error:
                results.append(
                    Result(
                        check.id,
                        host.host,
                        "error",
                        host.error,
                        check.severity,
                        controls,
                        rationale=why,
                        requirements=list(check.requirements),
                        remediation=remediation,
                    )
                )
                continue
            outcome = evaluate(check.rule, host.facts)
            status, detail = ("pass" if outcome.passed else "fail"), outcome.detail
            if check.not_applicable is not None:
                decided = evaluate(check.not_applicable.when, host.facts)
                if decided.passed:
                    # What the check found stays in the detail: not applicable is
                    # a reason shown, never a result hidden.
                    status = "not_applicable"
                    detail = (
                        f"not applicable: {check.not_applicable.reason} "
                        f"[{decided.detail}; found: {outcome.detail}]"
                    )
            result = Result(
                check.id,
                host.host,
                status,
                detail,
                check.severity,
                controls,
                rationale=why,
                requirements=list(check.requirements),
                remediation=remediation,
            )
            if status == "fail":
                waiver = next(
                    (w for w in waivers if w.covers(check.id, host.host, host.groups)), None
                )
                if waiver is not None:
                    record: dict[str, Any] = {
                        "reason": waiver.reason,
                        "approver": waiver.approver,
                        "expires": waiver.expires.isoformat(),
                    }
                    if waiver.expires >= today:
                        result.status = "waived"
                    else:
                        record["expired"] = True
                        result.detail += f" (waiver expired {waiver.expires.isoformat()})"
                    result.waiver = record
            results.append(result)
    return results
