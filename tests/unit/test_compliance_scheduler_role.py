"""The scheduler role's timers run each checklist at the time its own definition names
(seed 004 6.1), and every checklist has a timer."""

from __future__ import annotations

import yaml

from compliance.checklists import CHECKLIST_DIR, NAMES
from tests.integration.helpers import ROOT


def test_the_role_schedules_every_checklist_at_its_report_time() -> None:
    defaults = yaml.safe_load((ROOT / "roles/compliance_scheduler/defaults/main.yml").read_text())
    schedules = defaults["compliance_scheduler_schedules"]
    assert sorted(schedules) == sorted(NAMES)
    for name in NAMES:
        checklist = yaml.safe_load((CHECKLIST_DIR / f"{name}.yaml").read_text())
        assert schedules[name] == checklist["schedule"], name
    assert defaults["compliance_scheduler_keep_days"] == 365
