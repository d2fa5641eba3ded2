"""Forensic evidence of an incident from this machine (REQ-IR-6): `compliance forensics`
over a local inventory, as the collect playbook runs it on the management host.

What a process was started with and which socket it holds is found in the bundle,
with the executable's hash; a secret on a command line is masked; the bundle
verifies with the evidence key, chains to the incident's previous one, and fails
to verify once edited.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from compliance.evidence import generate_key, load_signing_key
from compliance.forensics import write_forensic_bundle
from compliance.gather.runner import HostFacts
from tests.support.commands import compliance

INCIDENT = "INC-2026-0042"


@pytest.fixture
def evidence_key(tmp_path: Path) -> Path:
    generate_key(tmp_path / "evidence.key")
    return tmp_path / "evidence.key"


def collected(inventory: Path, root: Path, key: Path, incident=INCIDENT, hosts="here"):
    where = ["-i", str(inventory), "--evidence-root", str(root), "--signing-key", str(key)]
    return compliance("forensics", "--incident", incident, "--hosts", hosts, *where)


def test_a_process_and_its_socket_are_in_a_signed_chained_bundle(
    inventory: Path, tmp_path: Path, evidence_key: Path
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    waiting = [sys.executable, "-c", "import time; time.sleep(300)"]
    sleeper = subprocess.Popen([*waiting, "--token", "s3cr3t-value", "password=hunter2"])
    # A name that is no text (any user may give its process one): recorded, not fatal.
    renamed = (
        "import ctypes, time; ctypes.CDLL(None).prctl(15, b'\\xff\\xfeevil', 0, 0, 0); "
        "time.sleep(300)"
    )
    hostile = subprocess.Popen([sys.executable, "-c", renamed])
    # A command line of 1 MB: the host's answer is larger than ansible-runner keeps by
    # default (700,000 characters), as a busy host's day of journal is.
    long = subprocess.Popen([*waiting, *(["x" * 100_000] * 10)])
    try:
        first = collected(inventory, tmp_path / "evidence", evidence_key)
    finally:
        sleeper.kill()
        hostile.kill()
        long.kill()
        listener.close()
    assert first.returncode == 0, first.stderr
    made = json.loads(first.stdout)
    bundle = Path(made["bundle"])
    assert bundle.parent == tmp_path / "evidence" / "incidents" / INCIDENT
    facts = json.loads((bundle / "hosts" / "here.json").read_text())
    mine = next(p for p in facts["processes"] if p["pid"] == sleeper.pid)
    executable = Path(sys.executable).resolve()
    assert mine["exe"] == str(executable)
    assert mine["exe_sha256"] == hashlib.sha256(executable.read_bytes()).hexdigest()
    assert mine["command"] == [*waiting, "--token", "***", "password=***"]
    raw = b"".join(
        f"{a}\0".encode() for a in [*waiting, "--token", "s3cr3t-value", "password=hunter2"]
    )
    assert mine["command_sha256"] == hashlib.sha256(raw).hexdigest()
    assert any(p["pid"] == long.pid for p in facts["processes"])
    named = next(p for p in facts["processes"] if p["pid"] == hostile.pid)
    assert named["name"] == "\\xff\\xfeevil"
    assert any(s["local"].endswith(f":{port}") and s["state"] == "LISTEN" for s in facts["sockets"])
    assert "s3cr3t-value" not in (bundle / "hosts" / "here.json").read_text()
    run = json.loads((bundle / "run.json").read_text())
    assert (run["kind"], run["incident"], run["previous"]) == ("forensic", INCIDENT, None)
    assert (
        made["manifest_sha256"]
        == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    )
    # The next collection follows it: one chain per incident (written as `collect` writes
    # it, from facts at hand: a second gathering would only take time).
    second = write_forensic_bundle(
        bundle.parent,
        INCIDENT,
        [HostFacts("here", [], {"processes": []})],
        load_signing_key(evidence_key),
    )
    follows = json.loads((second / "run.json").read_text())
    assert follows["previous"] == {"id": bundle.name, "manifest_sha256": made["manifest_sha256"]}
    public = str(evidence_key) + ".pub"
    verified = compliance("verify", str(bundle.parent), "--trusted-key", public)
    assert verified.returncode == 0, verified.stdout
    assert compliance("verify", made["archive"], "--trusted-key", public).returncode == 0
    # A process edited out of the record does not verify.
    facts["processes"] = [p for p in facts["processes"] if p["pid"] != sleeper.pid]
    (bundle / "hosts" / "here.json").write_text(json.dumps(facts))
    edited = compliance("verify", str(bundle.parent), "--trusted-key", public)
    assert edited.returncode == 1 and "hosts/here.json: changed" in edited.stdout


def test_a_bad_incident_id_or_host_is_refused_before_anything_is_gathered(
    inventory: Path, tmp_path: Path, evidence_key: Path
) -> None:
    for wrong in ("INC-26-1", "../../etc"):
        refused = collected(inventory, tmp_path / "evidence", evidence_key, incident=wrong)
        assert refused.returncode == 2 and "is not an incident id (INC-YYYY-NNNN)" in refused.stderr
    assert not (tmp_path / "evidence").exists()
    unknown = collected(inventory, tmp_path / "evidence", evidence_key, hosts="ghost")
    assert unknown.returncode == 2 and "ghost" in unknown.stderr
    assert not (tmp_path / "evidence" / "incidents" / INCIDENT).exists()
