"""Check definitions: YAML data in `compliance/checks/`, validated when loaded.

A check has an id, a title, a rationale, a scope (`host`: facts gathered
read-only from each host; `service`: facts the core service reports), a
severity, a rule over the facts (compliance.rules), the controls it supports
in each framework (many to many), and a remediation hint. Loading refuses a
check whose rule is malformed, that names a control its framework does not
have or that has a key it does not know, naming the file and the check.

A check may say when it does not apply to a host, decided from that host's
gathered facts by a rule of the same language, and why (REQ-COMP-17):

  not_applicable:
    when: {fact: system.container, equals: true}
    reason: "In a container the clock belongs to the container host ..."

A fact the gatherer could not read never makes a check not applicable (a rule
over a missing fact does not hold), so the check then runs as usual.

A check may say how soon a failure of it must be fixed (`remediate_within`):
a time such as `72h` or `14d`, or `patch_sla` for a check of security
updates, whose deadline is REQ-HARD-12's for the check's severity (critical
24 hours, high 7 days, medium 30 days, low 90 days; the gatherer's own table).
A check that says nothing gets the same deadlines by its severity: the
project's one stated remediation policy. The period report measures each
failure episode against it.

A rationale begins with the ids of the project requirements (docs/requirements.md)
the check enforces, then says why: "REQ-SVC-12, REQ-SVC-13 - keys rotate; ...".
Those leading ids are the check's `requirements`, carried into every report as
data, so an auditor's tool can go from a result to the requirement it verifies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compliance.catalog import Catalog, CatalogError, load_yaml, mapped_controls
from compliance.gather.host_facts import PATCH_SLA_HOURS
from compliance.rules import RuleError, validate

CHECK_DIR = Path(__file__).parent / "checks"
SCOPES = ("host", "service")
SEVERITIES = ("critical", "high", "medium", "low")
REQUIRED = ("id", "title", "rationale", "scope", "severity", "rule", "controls", "remediation")
OPTIONAL = ("groups", "not_applicable", "remediate_within")
PATCH_SLA = "patch_sla"
REMEDIATION_TIME = re.compile(r"(?P<count>[1-9][0-9]*)(?P<unit>[hd])")
# The ids a rationale opens with: one, or several joined by commas or "and".
LEADING_IDS = re.compile(r"\s*(REQ-[A-Z]+-[1-9][0-9]*)\b(?:\s*(?:,|and\b))?")


def requirement_ids(rationale: str) -> tuple[str, ...]:
    """The requirement ids RATIONALE begins with, in order, each once; () when it
    begins with something else (ids mentioned later in the text are not counted:
    they are context, not what the check enforces)."""
    found: list[str] = []
    position = 0
    while match := LEADING_IDS.match(rationale, position):
        found.append(match.group(1))
        position = match.end()
    return tuple(dict.fromkeys(found))


@dataclass(frozen=True)
class NotApplicable:
    when: dict[str, Any]  # a rule over the host's facts
    reason: str


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    rationale: str
    scope: str
    severity: str
    rule: dict[str, Any]
    controls: dict[str, tuple[str, ...]]
    remediation: str
    facts: tuple[str, ...] = field(default=())
    groups: tuple[str, ...] = ("all",)  # inventory groups whose hosts it applies to
    source: str = ""
    not_applicable: NotApplicable | None = None
    remediate_within: str | None = None  # "72h", "14d", "patch_sla"; None: by severity

    @property
    def requirements(self) -> tuple[str, ...]:
        return requirement_ids(self.rationale)

    def remediation_time(self) -> RemediationTime:
        return remediation_time(self.severity, self.remediate_within)


@dataclass(frozen=True)
class RemediationTime:
    hours: int
    basis: str  # where the time comes from, in words

    def __str__(self) -> str:
        return f"{self.hours // 24} d" if self.hours % 24 == 0 else f"{self.hours} h"


def remediation_time(severity: str, remediate_within: str | None = None) -> RemediationTime:
    """How soon a failure of a check of SEVERITY must be fixed, and on what basis."""
    if remediate_within == PATCH_SLA:
        return RemediationTime(
            PATCH_SLA_HOURS[severity], f"REQ-HARD-12 patch deadline for {severity} severity"
        )
    if remediate_within:
        match = REMEDIATION_TIME.fullmatch(remediate_within)
        if match is None:
            raise CatalogError(f"remediate_within {remediate_within!r}: e.g. 72h, 14d, patch_sla")
        count = int(match["count"]) * (24 if match["unit"] == "d" else 1)
        return RemediationTime(count, "the check's own remediation time")
    return RemediationTime(
        PATCH_SLA_HOURS[severity],
        f"REQ-HARD-12's deadline for {severity} severity, for a check without its own",
    )


def _check(item: Any, where: str, catalogs: dict[str, Catalog]) -> Check:
    if not isinstance(item, dict):
        raise CatalogError(f"{where}: a check is a mapping")
    missing = [key for key in REQUIRED if key not in item]
    if missing:
        raise CatalogError(f"{where}: {', '.join(missing)}: required")
    where = f"{where} ({item['id']})"
    unknown = sorted(set(item) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise CatalogError(f"{where}: unknown keys {', '.join(map(str, unknown))}")
    if item["scope"] not in SCOPES:
        raise CatalogError(f"{where}: scope {item['scope']!r}: one of {', '.join(SCOPES)}")
    if item["severity"] not in SEVERITIES:
        choices = ", ".join(SEVERITIES)
        raise CatalogError(f"{where}: severity {item['severity']!r}: one of {choices}")
    try:
        facts = validate(item["rule"], f"{where}: rule")
    except RuleError as error:
        raise CatalogError(str(error)) from error
    mapped = mapped_controls(item["controls"], where, catalogs)
    not_applicable = _not_applicable(item.get("not_applicable"), where)
    within = item.get("remediate_within")
    if within is not None and not (
        within == PATCH_SLA or (isinstance(within, str) and REMEDIATION_TIME.fullmatch(within))
    ):
        raise CatalogError(
            f"{where}: remediate_within {within!r}: a time (72h, 14d) or {PATCH_SLA}"
        )
    # Service facts come from the core hosts only.
    groups = item.get("groups", ["all"] if item["scope"] == "host" else ["core"])
    return Check(
        item["id"],
        item["title"],
        item["rationale"],
        item["scope"],
        item["severity"],
        item["rule"],
        mapped,
        item["remediation"],
        tuple(dict.fromkeys(facts)),
        tuple(groups),
        str(where.split(" (")[0]),
        not_applicable,
        within,
    )


def _not_applicable(value: Any, where: str) -> NotApplicable | None:
    if value is None:
        return None
    where = f"{where}: not_applicable"
    if not isinstance(value, dict):
        raise CatalogError(f"{where}: a mapping with when (a rule) and reason")
    unknown = sorted(set(value) - {"when", "reason"})
    if unknown:
        raise CatalogError(f"{where}: unknown keys {', '.join(map(str, unknown))}")
    reason = value.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise CatalogError(f"{where}: reason: why the check does not apply is required")
    if "when" not in value:
        raise CatalogError(f"{where}: when: the rule that decides it is required")
    try:
        validate(value["when"], f"{where}.when")
    except RuleError as error:
        raise CatalogError(str(error)) from error
    return NotApplicable(value["when"], " ".join(reason.split()))


def load_checks(catalogs: dict[str, Catalog], directory: Path = CHECK_DIR) -> list[Check]:
    checks: dict[str, Check] = {}
    for path in sorted(directory.glob("*.yaml")):
        data = load_yaml(path, "checks")
        if not isinstance(data, list):
            raise CatalogError(f"{path}: a list of checks")
        for index, item in enumerate(data):
            check = _check(item, f"{path}: [{index}]", catalogs)
            if check.id in checks:
                raise CatalogError(f"{path}: [{index}]: check {check.id} is defined twice")
            checks[check.id] = check
    return list(checks.values())
