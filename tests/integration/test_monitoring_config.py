"""roles/monitoring's configuration, rendered by Ansible from the role's templates and
defaults for the lab's hosts, checked by Prometheus's and Alertmanager's own tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.commands import ROOT
from tests.support.monitoring import RULES, planted_textfile_dir, render_monitoring, tool


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("monitoring")
    # The files the configuration names, where promtool looks for them.
    (directory / "rules").mkdir()
    shutil.copy(RULES, directory / "rules/securecore.rules.yml")
    for name in ("ca.pem", "client.pem", "client.key"):
        (directory / "tls").mkdir(exist_ok=True)
        (directory / "tls" / name).write_text("")
    return render_monitoring(
        directory,
        monitoring_config_dir=str(directory),
        monitoring_webhook_url="https://alerts.example.org/hook",
    )


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)


def test_the_prometheus_configuration_passes_promtool(rendered: Path) -> None:
    proc = check(tool("promtool"), "check", "config", str(rendered / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "31 rules found" in proc.stdout


def test_every_host_is_scraped_over_mutual_tls_and_the_core_hosts_service_too(
    rendered: Path,
) -> None:
    config = yaml.safe_load((rendered / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    node_hosts = {c["labels"]["host"] for c in jobs["node"]["static_configs"]}
    assert node_hosts == {"mgmt-01", "core-01", "core-02", "dmz-01", "plugin-01"}
    # The hosts that make backups carry backups (BackupMetricsAbsent reads it on up); no
    # scraped series keeps it.
    backups = {
        c["labels"]["host"]: c["labels"].get("backups") for c in jobs["node"]["static_configs"]
    }
    assert {host: made for host, made in backups.items() if made} == {"mgmt-01": "pgbackrest"}
    assert jobs["node"]["metric_relabel_configs"][0] == {"regex": "backups", "action": "labeldrop"}
    core = {c["labels"]["host"]: c["targets"] for c in jobs["securecore"]["static_configs"]}
    assert core == {"core-01": ["10.210.200.11:8443"], "core-02": ["10.210.200.12:8443"]}
    for name in ("node", "securecore"):
        assert jobs[name]["scheme"] == "https"
        tls = jobs[name]["tls_config"]
        assert tls["min_version"] == "TLS13" and tls["cert_file"].endswith("client.pem")
    # Alerts go to Alertmanager on loopback, with the host's password (REQ-MON-11), and
    # so does the scrape of Alertmanager's metrics.
    alerting = config["alerting"]["alertmanagers"][0]
    assert alerting["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    for auth in (alerting["basic_auth"], jobs["alertmanager"]["basic_auth"]):
        assert auth == {
            "username": "prometheus",
            "password_file": str(rendered / "alertmanager.password"),
        }


def test_the_alertmanager_configuration_passes_amtool(rendered: Path) -> None:
    proc = check(tool("amtool"), "check-config", str(rendered / "alertmanager.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Found:" in proc.stdout and "4 inhibit rules" in proc.stdout


def test_e_mail_is_configured_only_when_an_address_is_given(rendered: Path, tmp_path: Path) -> None:
    assert "email_configs" not in (rendered / "alertmanager.yml").read_text()
    mailing = render_monitoring(
        tmp_path,
        monitoring_webhook_url="https://alerts.example.org/hook",
        monitoring_email_to="oncall@example.org",
        monitoring_email_smarthost="smtp.example.org:587",
    )
    config = yaml.safe_load((mailing / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        assert receiver["email_configs"][0]["to"] == "oncall@example.org"
    assert config["global"]["smtp_require_tls"] is True
    proc = check(tool("amtool"), "check-config", str(mailing / "alertmanager.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_node_exporter_requires_a_client_certificate(rendered: Path) -> None:
    web = yaml.safe_load((rendered / "node-exporter-web.yml").read_text())["tls_server_config"]
    assert web["client_auth_type"] == "RequireAndVerifyClientCert"
    assert web["min_version"] == "TLS13"


def test_every_scrape_is_limited_in_series_and_size(rendered: Path) -> None:
    """Beyond either limit the scrape fails (up 0) rather than storing a flood."""
    config = yaml.safe_load((rendered / "prometheus.yml").read_text())
    limits = {
        job["job_name"]: (job["sample_limit"], job["body_size_limit"])
        for job in config["scrape_configs"]
    }
    assert limits == {
        "node": (20000, "16MB"),
        "securecore": (20000, "16MB"),
        "prometheus": (10000, "8MB"),
        "alertmanager": (5000, "4MB"),
    }


RELAY = ROOT / "roles/monitoring/files/securecore-metrics-relay"


def test_the_relay_writes_through_a_fresh_staging_file(tmp_path: Path) -> None:
    """The textfile directory has other writers: a link another writer placed at a
    predictable staging name is never written through, and nothing is left behind."""
    source = tmp_path / "endpoint"
    source.write_text("patroni_primary 1\ngo_goroutines 7\n")
    textfiles, victim = planted_textfile_dir(tmp_path, ".securecore_relay_patroni.prom.partial")
    out = textfiles / "securecore_relay_patroni.prom"
    for url, up in ((f"file://{source}", "1"), (f"file://{tmp_path}/missing", "0")):
        proc = check("sh", str(RELAY), "patroni", "patroni_", url, str(out))
        assert proc.returncode == (0 if up == "1" else 1), proc.stderr
        text = out.read_text()
        assert f'securecore_metrics_relay_up{{source="patroni"}} {up}' in text
        assert ("patroni_primary 1" in text) == (up == "1") and "go_goroutines" not in text
        assert out.stat().st_mode & 0o777 == 0o644
        assert sorted(p.name for p in textfiles.iterdir()) == [
            ".securecore_relay_patroni.prom.partial",
            "securecore_relay_patroni.prom",
        ]
    assert victim.read_text() == "untouched\n"
