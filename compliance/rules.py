"""The rule language of checks: declarative tests of gathered facts.

Facts are nested mappings (what one gathering pass found on a host, or what
the service reported); a rule names a fact by its dotted path and says what
it must be:

  {fact: sshd.permitrootlogin, equals: "no"}
  {fact: login_defs.pass_max_days, at_most: 90}       also at_least, above, below
  {fact: sshd.ciphers, subset_of: [aes256-gcm@openssh.com, ...]}    only these
  {fact: auditd.rule_keys, includes: [identity, logins]}           at least these
  {fact: nftables.input_policy, in: [drop, reject]}
  {fact: sudoers.nopasswd, empty: true}                a list or mapping with nothing in it
  {fact: tls_policy.ciphersuites, contains: TLS_AES_256_GCM_SHA384}
  {fact: aide.database, exists: true}
  {fact: sshd.banner, matches: "^/etc/issue"}
  {all: [rule, ...]}  {any: [rule, ...]}  {not: rule}

A fact that is absent or null (the gatherer could not find or read it) fails
every test but `exists: false` (absence is never a pass). `validate` checks a
rule's shape when checks are loaded, so a typo in a check file is an error
naming the check, not a silent pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from compliance.errors import ComplianceError

COMPARISONS = {
    "equals": lambda value, wanted: value == wanted,
    "in": lambda value, wanted: value in wanted,
    "at_most": lambda value, wanted: _number(value) <= wanted,
    "at_least": lambda value, wanted: _number(value) >= wanted,
    "above": lambda value, wanted: _number(value) > wanted,
    "below": lambda value, wanted: _number(value) < wanted,
    "subset_of": lambda value, wanted: set(_listed(value)) <= set(wanted),
    "includes": lambda value, wanted: set(wanted) <= set(_listed(value)),
    "contains": lambda value, wanted: wanted in _listed(value),
    "empty": lambda value, wanted: (len(value) == 0) == wanted,
    "matches": lambda value, wanted: re.search(wanted, str(value)) is not None,
    "exists": lambda value, wanted: wanted,  # reached only when the fact exists
}
COMBINATIONS = ("all", "any", "not")
MISSING = object()


class RuleError(ComplianceError, ValueError):
    """A rule that cannot be evaluated as written."""


@dataclass(frozen=True)
class Outcome:
    passed: bool
    detail: str  # what was found, for the report


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    return value


def _listed(value: Any) -> list:
    if isinstance(value, str):
        return [part for part in re.split(r"[,\s]+", value) if part]
    if isinstance(value, list | tuple | set):
        return list(value)
    raise TypeError(f"{value!r} is not a list")


def fact(facts: dict[str, Any], path: str) -> Any:
    """The value at PATH, or MISSING: also when it is null, which is how the gatherer
    says it could not find or read it (a database that is not there, a failed read)."""
    value: Any = facts
    for part in path.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return MISSING
        value = value[part]
    return value


def validate(rule: Any, where: str) -> list[str]:
    """The facts RULE reads; RuleError naming WHERE if it is not a rule."""
    if not isinstance(rule, dict) or not rule:
        raise RuleError(f"{where}: a rule is a mapping")
    combined = [key for key in COMBINATIONS if key in rule]
    if combined:
        if len(rule) != 1:
            raise RuleError(f"{where}: {combined[0]} stands alone in its rule")
        key = combined[0]
        if key == "not":
            return validate(rule["not"], f"{where}.not")
        parts = rule[key]
        if not isinstance(parts, list) or not parts:
            raise RuleError(f"{where}.{key}: a non-empty list of rules")
        return [f for i, part in enumerate(parts) for f in validate(part, f"{where}.{key}[{i}]")]
    if not isinstance(rule.get("fact"), str) or not rule["fact"]:
        raise RuleError(f"{where}: fact: the dotted path of a fact is required")
    tests = [key for key in rule if key != "fact"]
    if len(tests) != 1 or tests[0] not in COMPARISONS:
        raise RuleError(
            f"{where}: one test of {', '.join(COMPARISONS)} (found: {', '.join(tests) or 'none'})"
        )
    test, wanted = tests[0], rule[tests[0]]
    if test in ("at_most", "at_least", "above", "below") and (
        isinstance(wanted, bool) or not isinstance(wanted, int | float)
    ):
        raise RuleError(f"{where}: {test} takes a number")
    if test in ("in", "subset_of", "includes") and not isinstance(wanted, list):
        raise RuleError(f"{where}: {test} takes a list")
    if test in ("empty", "exists") and not isinstance(wanted, bool):
        raise RuleError(f"{where}: {test} takes true or false")
    if test == "matches":
        try:
            re.compile(str(wanted))
        except re.error as error:
            raise RuleError(f"{where}: matches: {error}") from error
    return [rule["fact"]]


def evaluate(rule: dict[str, Any], facts: dict[str, Any]) -> Outcome:
    if "all" in rule:
        outcomes = [evaluate(part, facts) for part in rule["all"]]
        failed = [o.detail for o in outcomes if not o.passed]
        return Outcome(not failed, "; ".join(failed or [o.detail for o in outcomes]))
    if "any" in rule:
        outcomes = [evaluate(part, facts) for part in rule["any"]]
        held = [o.detail for o in outcomes if o.passed]
        return Outcome(bool(held), "; ".join(held or [o.detail for o in outcomes]))
    if "not" in rule:
        inner = evaluate(rule["not"], facts)
        return Outcome(not inner.passed, f"not ({inner.detail})")
    path = rule["fact"]
    test = next(key for key in rule if key != "fact")
    wanted = rule[test]
    value = fact(facts, path)
    if value is MISSING:
        return Outcome(test == "exists" and wanted is False, f"{path}: not found")
    try:
        passed = bool(COMPARISONS[test](value, wanted))
    except (TypeError, ValueError) as error:
        return Outcome(False, f"{path} = {value!r}: {error}")
    return Outcome(passed, f"{path} = {value!r} ({test} {wanted!r})")
