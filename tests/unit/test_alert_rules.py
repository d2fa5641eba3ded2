"""The site's Prometheus alerting rules (roles/monitoring): well-formed, REQ-MON-2/3 and
REQ-PKI-5 thresholds, the service's series known. promtool checks and unit-tests them in
tests/integration/test_monitoring_rules.py."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = yaml.safe_load((ROOT / "roles/monitoring/files/securecore.rules.yml").read_text())
# Every series the service exports (securecore/monitoring, securecore/server/live_metrics.py).
EXPORTED = {
    "securecore_incident_open",
    "securecore_plugin_trust_score",
    "securecore_plugin_success_ratio",
    "securecore_plugin_calls",
    "securecore_plugins",
    "securecore_certificate_not_after_seconds",
    "securecore_audit_uncheckpointed_records",
    "securecore_request_duration_seconds_bucket",
    "securecore_intrusion_responses_total",
    "securecore_audit_records",
    "securecore_audit_witness_cosigned_size",
    "securecore_audit_witness_cosigned_timestamp_seconds",
    "securecore_audit_witness_deadline_seconds",
    # node_exporter's textfile collector: compliance/schedule.py, roles/monitoring's relays,
    # and roles/postgresql_backup's securecore-backup-metrics (the pgBackRest repositories)
    "securecore_compliance_run_missed",
    "securecore_compliance_last_run_status",
    "securecore_compliance_evidence_broken",
    "securecore_backup_last_success_timestamp_seconds",
    "securecore_metrics_relay_up",
    "up",
}


def rules() -> list[dict]:
    return [rule for group in RULES["groups"] for rule in group["rules"]]


def test_every_rule_is_complete_and_uses_exported_series() -> None:
    for rule in rules():
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        severity = rule["labels"]["severity"]
        # A severity set from a label (the incidents' escalation level) yields one of
        # the three on every branch; promtool's cases show which.
        outcomes = (
            set(re.findall(r"\}\}([a-z]+)\{\{", severity)) if "{{" in severity else {severity}
        )
        assert outcomes and outcomes <= {"critical", "warning", "info"}, (rule["alert"], severity)
        used = set(re.findall(r"\b(securecore_[a-z_]+|up)\b(?![.\]])", rule["expr"]))
        assert used <= EXPORTED, (rule["alert"], used - EXPORTED)


def test_the_required_thresholds_are_the_ones_alerted() -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    assert "<= 30" in by_name["SecureCorePluginTrustCritical"]["expr"]
    assert by_name["SecureCorePluginTrustCritical"]["labels"]["severity"] == "critical"
    assert "<= 0.90" in by_name["SecureCorePluginSuccessRateLow"]["expr"]
    assert by_name["SecureCorePluginRegistered"]["labels"]["severity"] == "info"
    assert "<= 30 * 86400" in by_name["SecureCoreCertificateExpiresSoon"]["expr"]


def test_every_selector_names_the_job_that_produces_its_series() -> None:
    """REQ-MON-10: a series of the same name served by another job (a textfile on any
    host is node_exporter's) neither fires nor hides an alert: the core's series are job
    securecore's, the hosts', relayed and textfile ones job node's."""
    node = re.compile(r"(patroni|etcd|haproxy|node)_|securecore_(compliance|backup|metrics_relay)_")
    for rule in rules():
        # Names in strings (a textfile's file name) are no selectors.
        expr = re.sub(r'"[^"]*"', '""', rule["expr"])
        for name, brace in re.findall(
            r"\b((?:securecore|patroni|etcd|haproxy|node)_[a-z_]+|up)\b(\{?)", expr
        ):
            assert brace, (rule["alert"], name, "no job")
        for name, job in re.findall(
            r"\b((?:securecore|patroni|etcd|haproxy|node)_[a-z_]+|up)\{job=\"(\w+)\"", rule["expr"]
        ):
            if name != "up":
                assert job == ("node" if node.match(name) else "securecore"), (rule["alert"], name)
        selectors = re.findall(
            r"\b(?:securecore|patroni|etcd|haproxy|node)_[a-z_]+\{([^}]*)\}", rule["expr"]
        )
        assert all(s.startswith('job="') for s in selectors), rule["alert"]
