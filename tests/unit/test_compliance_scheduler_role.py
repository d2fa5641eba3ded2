"""The scheduler role's timers run each checklist at the time its own definition names
(REQ-COMP-12), and every checklist has a timer."""

from __future__ import annotations

import yaml

from compliance.checklists import CHECKLIST_DIR, NAMES
from tests.support.commands import ROOT


def test_the_role_schedules_every_checklist_at_its_report_time() -> None:
    defaults = yaml.safe_load((ROOT / "roles/compliance_scheduler/defaults/main.yml").read_text())
    schedules = defaults["compliance_scheduler_schedules"]
    assert sorted(schedules) == sorted(NAMES)
    for name in NAMES:
        checklist = yaml.safe_load((CHECKLIST_DIR / f"{name}.yaml").read_text())
        assert schedules[name] == checklist["schedule"], name
    assert defaults["compliance_scheduler_keep_days"] == 365


def test_the_units_anchor_each_series_and_pin_the_attesters(tmp_path) -> None:
    """The scheduled run keeps series heads outside the evidence directory and counts
    only pinned attesters; the status check verifies every series against the public key
    and its head. The attesters file the role renders is one `compliance` loads."""
    import json

    import jinja2
    from cryptography.hazmat.primitives import serialization

    from compliance.attestations import load_attesters
    from compliance.evidence import generate_key, load_signing_key

    templates = ROOT / "roles/compliance_scheduler/templates"
    run = (templates / "securecore-compliance@.service.j2").read_text()
    assert "--head-dir {{ compliance_scheduler_home }}/heads" in run
    assert "--attesters {{ compliance_scheduler_config_dir }}/attesters.yml" in run
    status = (templates / "securecore-compliance-status.service.j2").read_text()
    assert "--trusted-key {{ compliance_scheduler_public_key }}" in status
    assert "--head-dir {{ compliance_scheduler_home }}/heads" in status
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 - YAML, not HTML
    environment.filters["to_json"] = json.dumps
    template = environment.from_string((templates / "attesters.yml.j2").read_text())
    generate_key(tmp_path / "alice.key")
    pem = (tmp_path / "alice.key.pub").read_text()
    for attesters, names in (({}, []), ({"alice": pem, "bob: x": pem}, ["alice", "bob: x"])):
        path = tmp_path / "attesters.yml"
        path.write_text(
            template.render(
                ansible_managed="managed",
                compliance_scheduler_attesters=attesters,
                compliance_scheduler_attester_cas=[],
            )
        )
        assert sorted(load_attesters(path)) == names
    from tests.support.evidence import issued_certificate

    authority = load_signing_key(tmp_path / "alice.key")
    ca = issued_certificate("people CA", authority.public_key(), "people CA", authority)
    pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    path.write_text(
        template.render(
            ansible_managed="managed",
            compliance_scheduler_attesters={},
            compliance_scheduler_attester_cas=[pem],
        )
    )
    assert load_attesters(path).authorities == (ca,)
