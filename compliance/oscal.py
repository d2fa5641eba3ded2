"""A run as OSCAL 1.1 assessment results (assessment-results.json in every bundle).

The mapping, for a reader who knows OSCAL:

- one `result` per run; its `reviewed-controls` are the controls the run's
  checks (and a checklist's items) map to, one control selection per framework;
- each host is an `inventory-item` of the result's local definitions, and the
  tool is the `origin` actor of everything it observed;
- one `observation` per check and host (`methods: TEST`), its subject the host,
  its evidence the masked facts in the same bundle (`facts/HOST.json`); its
  description ends with the check's rationale, and a `requirement` prop names
  each project requirement (docs/requirements.md) the check verifies;
  a checklist item that a person attests is an observation with `EXAMINE`, and
  a pending attestation is said to be pending, never satisfied;
- one `finding` per control: `satisfied` only when every related observation
  passed; a waived failure is `not-satisfied` with the waiver in its remarks,
  an error (host not gathered) is `not-satisfied` with reason `other`; its
  `requirement` props are those of the checks behind it;
- a check that does not apply to a host (REQ-COMP-17) is still observed, with
  the reason in its remarks; it neither satisfies nor fails a control. A control
  whose every observation is not applicable has a finding whose target's
  `implementation-status` is `not-applicable`, the reasons in its remarks; the
  schema requires an objective status of two states, and such a control has
  nothing left to satisfy: `satisfied`, reason `other`, never `pass`. Beside
  other observations, the others decide.

OSCAL has no assessment plan of ours to import, so `import-ap` points at a
back-matter resource describing the check definitions and their SHA-256.
Names that OSCAL does not define are in our own namespace (`NS`).
"""

from __future__ import annotations

import datetime
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from compliance import __version__
from compliance.controls import NOT_APPLICABLE, SATISFIED, judged
from compliance.report_sections import run_value

OSCAL_VERSION = "1.1.3"
NS = "https://securecore.dev/ns/oscal"
# Frameworks as OSCAL names them in props; the catalogs' own ids are kept as control ids.
FRAMEWORK_TITLES = {
    "iso27001-2022": "ISO/IEC 27001:2022 Annex A",
    "soc2-tsc": "SOC 2 Trust Services Criteria (2017, revised 2022)",
}


def _uuid() -> str:
    return str(uuid.uuid4())


def _prop(name: str, value: Any) -> dict[str, str]:
    return {"name": name, "ns": NS, "value": str(value)}


def _time(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat()
    return str(value)


def _observation(result: dict[str, Any], subject: str, tool: str, collected: str) -> dict:
    status = result["status"]
    description = f"Check {result['check']} on {result['host']}: {status}."
    if result["detail"]:
        description += f" {result['detail']}"
    if result.get("rationale"):
        description += f"\n\nWhy this check: {result['rationale']}"
    observation = {
        "uuid": _uuid(),
        "title": f"{result['check']} on {result['host']}",
        "description": description,
        "props": [
            _prop("check", result["check"]),
            _prop("status", status),
            _prop("severity", result["severity"]),
            *(_prop("requirement", i) for i in result.get("requirements", [])),
        ],
        "methods": ["TEST"],
        "types": ["finding"],
        "origins": [{"actors": [{"type": "tool", "actor-uuid": tool}]}],
        "subjects": [{"subject-uuid": subject, "type": "inventory-item", "title": result["host"]}],
        "relevant-evidence": [
            {
                "href": f"facts/{result['host']}.json",
                "description": f"Facts gathered from {result['host']} (masked)",
            }
        ],
        "collected": collected,
    }
    if status == "not_applicable":
        observation["remarks"] = result["detail"]
    if result.get("waiver"):
        waiver = result["waiver"]
        observation["remarks"] = (
            f"Waived by {waiver['approver']} until {waiver['expires']}: {waiver['reason']}"
        )
    return observation


def _item_observation(item: dict[str, Any], tool: str, collected: str) -> dict:
    attestation = item.get("attestation")
    if attestation:
        description = (
            f"Checklist item {item['id']} attested by {attestation['by']} at "
            f"{attestation['at']} (signed, key {attestation.get('signed_by')}): "
            f"{attestation['note']}"
        )
    else:
        description = f"Checklist item {item['id']}: no attestation in this period (pending)."
    return {
        "uuid": _uuid(),
        "title": f"{item['id']}: {item['title']}",
        "description": description,
        "props": [_prop("checklist-item", item["id"]), _prop("status", item["status"])],
        "methods": ["EXAMINE"],
        "types": ["control-objective"],
        "origins": [{"actors": [{"type": "tool", "actor-uuid": tool}]}],
        "collected": collected,
    }


def _finding(framework: str, control: str, related: list[dict[str, Any]]) -> dict:
    # The state is the run's judgement of the control (compliance.controls); the reason
    # says whether it was assessed in full.
    judgement = judged({r["status"] for r in related})
    statuses = {r["status"] for r in related} - {"not_applicable"}
    requirements = sorted({i for r in related for i in r["requirements"]})
    if judgement == SATISFIED:
        state, reason = "satisfied", "pass"
    elif judgement == NOT_APPLICABLE:
        state, reason = "satisfied", "other"
    elif statuses & {"error", "pending"}:  # not (fully) assessed: never satisfied
        state, reason = "not-satisfied", "other"
    else:
        state, reason = "not-satisfied", "fail"
    counts = ", ".join(
        f"{sum(r['status'] == s for r in related)} {s}"
        for s in ("pass", "fail", "waived", "error", "pending", "not_applicable")
        if any(r["status"] == s for r in related)
    )
    target: dict[str, Any] = {
        "type": "objective-id",
        "target-id": f"{control}_obj",
        "status": {"state": state, "reason": reason},
    }
    if not statuses:
        target["implementation-status"] = {
            "state": "not-applicable",
            "remarks": "; ".join(sorted({r["detail"] for r in related})),
        }
    finding = {
        "uuid": _uuid(),
        "title": f"{FRAMEWORK_TITLES.get(framework, framework)} {control}",
        "description": f"{control}: {counts} (checks and hosts that support this control).",
        "props": [
            _prop("framework", framework),
            *(_prop("requirement", i) for i in requirements),
        ],
        "target": target,
        "related-observations": [{"observation-uuid": r["observation"]} for r in related],
    }
    if "waived" in statuses:
        finding["remarks"] = (
            "Includes waived failures: the control is not satisfied; "
            "the risk was accepted by the waivers' approvers."
        )
    return finding


def assessment_results(
    title: str,
    run: dict[str, Any],
    hosts: list[dict[str, Any]],
    results: list[dict[str, Any]],
    items: list[dict[str, Any]] | None = None,
    item_controls: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> dict[str, Any]:
    """The OSCAL document (a dict ready for JSON) for one run."""
    now = datetime.datetime.now(datetime.UTC)
    started = _time(run["started"])
    tool, plan = _uuid(), _uuid()
    subjects = {h["host"]: _uuid() for h in hosts}
    observations, by_control = [], defaultdict(list)
    for result in results:
        observation = _observation(result, subjects[result["host"]], tool, started)
        observations.append(observation)
        for framework, controls in result["controls"].items():
            for control in controls:
                by_control[framework, control].append(
                    {
                        "status": result["status"],
                        "observation": observation["uuid"],
                        "requirements": result.get("requirements", []),
                        "detail": f"{result['check']} on {result['host']}: {result['detail']}",
                    }
                )
    # A checklist item's attestation part (its checks are already results above).
    for item in items or []:
        attested = (item_controls or {}).get(item["id"])
        if attested is None:
            continue
        observation = _item_observation(item, tool, now.isoformat())
        observations.append(observation)
        status = "pass" if item.get("attestation") else "pending"
        for framework, controls in attested.items():
            for control in controls:
                by_control[framework, control].append(
                    {
                        "status": status,
                        "observation": observation["uuid"],
                        "requirements": [],
                        "detail": f"{item['id']}: {status}",
                    }
                )
    selections = []
    for framework in sorted({f for f, _ in by_control}):
        selections.append(
            {
                "description": FRAMEWORK_TITLES.get(framework, framework),
                "props": [_prop("framework", framework)],
                "include-controls": [
                    {"control-id": c} for f, c in sorted(by_control) if f == framework
                ],
            }
        )
    inventory = [
        {
            "uuid": subjects[h["host"]],
            "description": f"Host {h['host']} (groups: {', '.join(h['groups']) or 'none'})",
            "props": [_prop("hostname", h["host"])]
            + ([_prop("gathering-error", h["error"])] if h.get("error") else []),
        }
        for h in hosts
    ]
    return {
        "assessment-results": {
            "uuid": _uuid(),
            "metadata": {
                "title": title,
                "last-modified": now.isoformat(),
                "version": __version__,
                "oscal-version": OSCAL_VERSION,
                "props": [
                    _prop("inventory", run.get("inventory")),
                    _prop("limit", run_value("limit", run.get("limit"))),
                ],
            },
            "import-ap": {
                "href": f"#{plan}",
                "remarks": "No assessment plan document: the check definitions "
                "used are named in back-matter.",
            },
            "results": [
                {
                    "uuid": _uuid(),
                    "title": title,
                    "description": f"Automated checks over {len(hosts)} host(s) by the SecureCore "
                    f"compliance tool {__version__}.",
                    "start": started,
                    "end": now.isoformat(),
                    "local-definitions": {
                        "components": [
                            {
                                "uuid": tool,
                                "type": "software",
                                "title": "compliance",
                                "description": "SecureCore compliance tool",
                                "props": [_prop("version", __version__)],
                                "status": {"state": "operational"},
                            }
                        ],
                        "inventory-items": inventory,
                    },
                    "reviewed-controls": {
                        "control-selections": selections or [{"include-all": {}}]
                    },
                    "observations": observations,
                    "findings": [
                        _finding(f, c, related) for (f, c), related in sorted(by_control.items())
                    ],
                }
            ],
            "back-matter": {
                "resources": [
                    {
                        "uuid": plan,
                        "title": "Check definitions",
                        "description": (
                            "The check definitions (compliance/checks/*.yaml) of this run."
                        ),
                        "props": [
                            _prop("checks-sha256", run.get("checks_sha256")),
                            _prop(
                                "waivers-sha256",
                                run_value("waivers_sha256", run.get("waivers_sha256")),
                            ),
                        ],
                    }
                ]
            },
        }
    }
