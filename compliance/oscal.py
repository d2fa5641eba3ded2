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

A period bundle's oscal-assessment-results.json (`period_assessment_results`)
holds the period's runs, a result each made as above but for its observations:
each result links the run's own bundle (a back-matter resource naming it and
its manifest's SHA-256, and linking the copy under samples/ for a sampled
run), whose assessment-results.json observes each check on each host. A year
of them is thus a result per run and a finding per control it judged, not a
copy of every run's observations. The report's verdict on the evidence is
the metadata's remarks.
Names that OSCAL does not define are in our own namespace (`NS`).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from compliance import __version__
from compliance.controls import (
    NOT_APPLICABLE,
    SATISFIED,
    attestation_state,
    controls_in_run,
    judged,
)
from compliance.period import PeriodReport, sample_path, when
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


def _listed(names: Any) -> str:
    return ", ".join(names or []) or "none"


def _time(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat()
    return str(value)


def _observation(result: Mapping[str, Any], subject: str, tool: str, collected: str) -> dict:
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


def _item_observation(item: Mapping[str, Any], tool: str, collected: str) -> dict:
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
    }
    observed = [{"observation-uuid": r["observation"]} for r in related if r["observation"]]
    if observed:  # else they are in the run's own bundle, which its result links
        finding["related-observations"] = observed
    if "waived" in statuses:
        finding["remarks"] = (
            "Includes waived failures: the control is not satisfied; "
            "the risk was accepted by the waivers' approvers."
        )
    return finding


def _related(result: Mapping[str, Any], observed: Mapping[int, str]) -> dict[str, Any]:
    return {
        "status": result["status"],
        "observation": observed.get(id(result)),
        "requirements": result.get("requirements", []),
        "detail": f"{result['check']} on {result['host']}: {result['detail']}",
    }


def _attested(item: Mapping[str, Any], observed: Mapping[int, str]) -> dict[str, Any]:
    status = "pass" if attestation_state(item) == "attested" else "pending"
    return {
        "status": status,
        "observation": observed.get(id(item)),
        "requirements": [],
        "detail": f"{item['id']}: {status}",
    }


@dataclass(frozen=True)
class Evidence:
    """A run's bundle as another document cites it: HREF (a back-matter resource), NAME."""

    href: str
    name: str


def run_result(
    title: str,
    description: str,
    start: str,
    end: str,
    hosts: Sequence[Mapping[str, Any]],
    results: Sequence[Mapping[str, Any]],
    items: Sequence[Mapping[str, Any]] = (),
    item_controls: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    bundle: Evidence | None = None,
) -> dict[str, Any]:
    """One run as an OSCAL result: its hosts, an observation per check and host (and per
    attestable item), a finding per control. BUNDLE: the run's own bundle, when the result
    is in another document: the result links it, and the observations, which its
    assessment-results.json holds, are not repeated."""
    tool = _uuid()
    named = {h["host"] for h in hosts}
    hosts = [*hosts, *({"host": h} for h in sorted({r["host"] for r in results} - named))]
    subjects = {h["host"]: _uuid() for h in hosts}
    observations, observed = [], {}  # id() of a result or an item -> its observation
    # A checklist item's attestation part (its checks are results).
    attestable = [i for i in items if (item_controls or {}).get(i["id"]) is not None]
    for result in results if bundle is None else []:
        observation = _observation(result, subjects[result["host"]], tool, start)
        observations.append(observation)
        observed[id(result)] = observation["uuid"]
    for item in attestable if bundle is None else []:
        observation = _item_observation(item, tool, end)
        observations.append(observation)
        observed[id(item)] = observation["uuid"]
    # The controls as the run judged them (compliance.controls), each with what supports it.
    by_control = {
        key: [_related(r, observed) for r in control.results]
        + [_attested(i, observed) for i in control.items]
        for key, control in controls_in_run(results, attestable, item_controls or {}).items()
    }
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
            "description": f"Host {h['host']} (groups: {_listed(h.get('groups'))})",
            "props": [_prop("hostname", h["host"])]
            + ([_prop("gathering-error", h["error"])] if h.get("error") else []),
        }
        for h in hosts
    ]
    found: dict[str, Any] = {
        "uuid": _uuid(),
        "title": title,
        "description": description,
        "start": start,
        "end": end,
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
        "reviewed-controls": {"control-selections": selections or [{"include-all": {}}]},
    }
    if bundle is not None:  # its observations are in the run's own bundle
        found["links"] = [
            {
                "href": bundle.href,
                "rel": "reference",
                "text": f"The run's bundle {bundle.name}: its assessment-results.json observes "
                "each check on each host",
            }
        ]
    # OSCAL's lists hold at least one entry: a run that found nothing has none of them.
    if observations:
        found["observations"] = observations
    if by_control:
        found["findings"] = [
            _finding(f, c, related) for (f, c), related in sorted(by_control.items())
        ]
    return found


def _document(
    title: str,
    modified: datetime.datetime,
    props: list[dict[str, str]],
    plan: dict[str, Any],
    results: list[dict[str, Any]],
    resources: Sequence[dict[str, Any]] = (),
    remarks: str = "",
) -> dict[str, Any]:
    """The assessment-results document of RESULTS; PLAN: the back-matter resource that
    stands for the assessment plan (there is no plan document of ours to import)."""
    metadata: dict[str, Any] = {
        "title": title,
        "last-modified": modified.isoformat(),
        "version": __version__,
        "oscal-version": OSCAL_VERSION,
        "props": props,
    }
    if remarks:
        metadata["remarks"] = remarks
    return {
        "assessment-results": {
            "uuid": _uuid(),
            "metadata": metadata,
            "import-ap": {
                "href": f"#{plan['uuid']}",
                "remarks": "No assessment plan document: what was assessed against is "
                "described in back-matter.",
            },
            "results": results,
            "back-matter": {"resources": [plan, *resources]},
        }
    }


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
    result = run_result(
        title,
        f"Automated checks over {len(hosts)} host(s) by the SecureCore compliance tool "
        f"{__version__}.",
        _time(run["started"]),
        now.isoformat(),
        hosts,
        results,
        items or [],
        item_controls,
    )
    plan = {
        "uuid": _uuid(),
        "title": "Check definitions",
        "description": "The check definitions (compliance/checks/*.yaml) of this run.",
        "props": [
            _prop("checks-sha256", run.get("checks_sha256")),
            _prop("waivers-sha256", run_value("waivers_sha256", run.get("waivers_sha256"))),
        ],
    }
    props = [
        _prop("inventory", run.get("inventory")),
        _prop("limit", run_value("limit", run.get("limit"))),
    ]
    return _document(title, now, props, plan, [result])


def period_assessment_results(report: PeriodReport) -> dict[str, Any]:
    """The period's runs as OSCAL assessment results: a result per run its population
    found (each due time's run and any additional one), in the order they were signed,
    with its hosts and a finding per control, as in the run's own bundle. Each result
    links the run's bundle - a back-matter resource that names it and its manifest's
    SHA-256 and links it where the report read it (a file: URI on the machine that
    made the report) and, when the run was sampled, its copy under samples/ first -
    whose assessment-results.json holds the observations. The metadata's remarks are
    the report's verdict on the evidence."""
    sampled = {(s.series, s.bundle): sample_path(s) for s in report.samples}
    kept = {series.name: series.path.resolve() for series in report.series}
    runs = sorted(
        (
            (due, run, run is not due.run)
            for made in report.populations.values()
            for due in made.dues
            for run in ([due.run] if due.run else []) + due.extra
        ),
        key=lambda found: found[1].signed_at,
    )
    results, resources = [], []
    for due, run, additional in runs:
        resource: dict[str, Any] = {
            "uuid": _uuid(),
            "title": f"Evidence bundle {run.bundle}",
            "description": f"The {run.checklist} run's signed bundle {run.bundle} in the "
            f"series {run.series}, verified by this report.",
            "props": [
                _prop("series", run.series),
                _prop("bundle", run.bundle),
                _prop("manifest-sha256", run.manifest_sha256),
            ],
        }
        # The same hash for each place: whichever copy a reader opens, it is this one.
        hashes = [{"algorithm": "SHA-256", "value": run.manifest_sha256}]
        copy = sampled.get((run.series, run.bundle))
        places = [f"{copy}/manifest.json"] if copy is not None else []
        if run.series in kept:
            places.append((kept[run.series] / run.bundle / "manifest.json").as_uri())
        resource["rlinks"] = [{"href": href, "hashes": hashes} for href in places]
        resources.append(resource)
        which = (
            f"an additional run after the run due {when(due.due)}"
            if additional
            else f"the run due {when(due.due)} ({due.status})"
        )
        signed = _time(run.signed_at)
        results.append(
            run_result(
                f"{run.checklist} run signed {when(run.signed_at)} (bundle {run.bundle})",
                f"The {run.checklist} checklist's checks and attestations: {which}.",
                run.started or signed,
                signed,
                run.hosts,
                run.results,
                run.items,
                report.item_controls,
                Evidence(f"#{resource['uuid']}", run.bundle),
            )
        )
    plan = {
        "uuid": _uuid(),
        "title": "The period report",
        "description": "period.json of this bundle: the population, exceptions, attestations, "
        "controls and samples of the period (REQ-COMP-18 to REQ-COMP-23), read from the runs "
        "these results show.",
        "rlinks": [{"href": "period.json"}],
    }
    props = [
        _prop("period-from", report.first.isoformat()),
        _prop("period-to", report.last.isoformat()),
        _prop("evidence-verified", str(report.verified).lower()),
    ]
    title = f"Evidence over the period {report.first} to {report.last}"
    return _document(title, report.made, props, plan, results, resources, report.verdict())
