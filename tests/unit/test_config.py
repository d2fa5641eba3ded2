"""The configuration file: [edge] principals are checked when it is read (REQ-EDGE-5), and
[service] workers may be "auto"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from securecore import config as configuration
from securecore.config import ConfigError


def write(tmp_path: Path, edge: str, service: str = "") -> Path:
    (tmp_path / "keys").mkdir()
    (tmp_path / "hmac").write_text("k" * 64)
    path = tmp_path / "config.toml"
    path.write_text(
        f'[service]\ndata_dir = "data"\n{service}\n'
        '[keys]\nbackend = "software"\n\n[keys.software]\ndirectory = "keys"\n\n'
        '[audit]\ndatabase = "audit.db"\nwitness_dir = "witness"\norigin = "test/audit"\n'
        'hmac_key_file = "hmac"\n\n' + edge
    )
    return path


def test_no_edge_is_trusted_by_default(tmp_path: Path) -> None:
    assert configuration.load(write(tmp_path, "")).get("edge", "principals") == []


def test_edge_principals_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, '[edge]\nprincipals = ["dmz/dmz-01", "dmz/dmz-02"]\n')
    assert configuration.load(path).get("edge", "principals") == ["dmz/dmz-01", "dmz/dmz-02"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"dmz-01"', "'dmz-01' is not a principal id (KIND/NAME with KIND one of admin, "),
        ('"dmz/"', "'dmz/' is not a principal id"),
        ('"dmz/a/b"', "'dmz/a/b' is not a principal id"),
        ('"edge/dmz-01"', "'edge/dmz-01' is not a principal id"),
        ("3", "3 is not a principal id"),
        # A principal that is no DMZ host would be trusted to name any client.
        ('"core/core-01"', "'core/core-01': an edge is a DMZ host (dmz/NAME)"),
        ('"admin/alice"', "'admin/alice': an edge is a DMZ host"),
    ],
)
def test_a_malformed_edge_principal_is_named_with_the_file_and_key(
    tmp_path: Path, value: str, message: str
) -> None:
    path = write(tmp_path, f'[edge]\nprincipals = ["dmz/dmz-01", {value}]\n')
    with pytest.raises(ConfigError) as raised:
        configuration.load(path)
    text = str(raised.value)
    assert text.startswith(f"{path}: 1 problem(s):")
    assert f"[edge] principals: {message}" in text


def test_edge_principals_must_be_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, '[edge]\nprincipals = "dmz/dmz-01"\n')
    with pytest.raises(ConfigError, match=r"\[edge\] principals: must be list, not str"):
        configuration.load(path)


def test_workers_auto_is_one_per_cpu_this_process_may_use(tmp_path: Path) -> None:
    path = write(tmp_path, "", 'workers = "auto"')
    assert configuration.load(path).get("service", "workers") == len(os.sched_getaffinity(0))


def test_workers_auto_stops_at_eight_on_a_large_host(tmp_path: Path, monkeypatch) -> None:
    # Each worker holds an HSM session and database connections of its own.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    path = write(tmp_path, "", 'workers = "auto"')
    assert configuration.load(path).get("service", "workers") == configuration.AUTO_MAXIMUM == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert configuration.load(path).get("service", "workers") == 3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"all"', 'must be int or "auto", not str'),
        ("true", 'must be int or "auto", not bool'),
        ("0", "= 0: at least 1"),
    ],
)
def test_workers_is_a_number_or_auto(tmp_path: Path, value: str, message: str) -> None:
    path = write(tmp_path, "", f"workers = {value}")
    with pytest.raises(ConfigError) as raised:
        configuration.load(path)
    assert f"[service] workers{' ' if message.startswith('=') else ': '}{message}" in str(
        raised.value
    )
