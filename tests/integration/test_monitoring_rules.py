"""The site's alerting rules with Prometheus's own checker and rule unit tests (promtool).

Each group of roles/monitoring/files/securecore.rules.yml has a test file in
tests/monitoring: for every alert, series where it fires (its labels and
annotations) and series just on the safe side of its threshold where it stays
silent.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.monitoring import RULE_TESTS, RULES, tool

TEST_FILES = sorted(RULE_TESTS.glob("*.test.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_rules_pass_promtool_check() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_group_has_a_test_file_and_every_alert_a_case_where_it_fires() -> None:
    """The silent side is in the same cases: promtool fails on any alert that fires
    and is not expected, so the series just on the safe side beside a firing one (or
    an evaluation before its for: has passed) must stay silent."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert {g["name"] for g in groups} == {p.name.removesuffix(".test.yml") for p in TEST_FILES}
    for group in groups:
        tests = yaml.safe_load((RULE_TESTS / f"{group['name']}.test.yml").read_text())["tests"]
        checks = [check for test in tests for check in test.get("alert_rule_test", [])]
        for rule in group["rules"]:
            mine = [c for c in checks if c["alertname"] == rule["alert"]]
            assert any(c["exp_alerts"] for c in mine), f"{rule['alert']}: no case where it fires"


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: Path(p).name)
def test_the_rule_unit_tests_pass(path: Path) -> None:
    proc = promtool("test", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_changed_threshold_fails_its_unit_test(tmp_path: Path) -> None:
    """The unit tests hold the thresholds: the trust alert at 29 instead of 30 fails."""
    changed = RULES.read_text().replace(
        'securecore_plugin_trust_score{job="securecore"} <= 30',
        'securecore_plugin_trust_score{job="securecore"} <= 29',
    )
    assert changed != RULES.read_text()
    rules = tmp_path / "roles/monitoring/files/securecore.rules.yml"
    rules.parent.mkdir(parents=True)
    rules.write_text(changed)
    test_file = tmp_path / "tests/monitoring/securecore-plugins.test.yml"
    test_file.parent.mkdir(parents=True)
    test_file.write_text((RULE_TESTS / "securecore-plugins.test.yml").read_text())
    proc = promtool("test", "rules", str(test_file))
    assert proc.returncode != 0
    assert "SecureCorePluginTrustCritical" in proc.stdout + proc.stderr
