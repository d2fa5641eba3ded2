"""`securecore-lab init` and `securecore audit verify|prove|export` as a user runs them.

The export is checked by an independent verifier written here from the
documented format (docs/audit-export.md) with hashlib and cryptography only:
what an auditor's own tool would do with the public key alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.commands import ROOT, WRITE_RECORDS, outside_verifier, securecore, securecore_lab


@pytest.fixture(params=[pytest.param("softhsm", marks=pytest.mark.softhsm), "software"])
def setup(request, tmp_path: Path) -> tuple[Path, str]:
    """A development setup with 250 records, checkpointed; returns (config, public key PEM)."""
    directory = tmp_path / "dev"
    extra = ["--software-keys"] if request.param == "software" else []
    made = securecore_lab("init", str(directory), *extra)
    assert ("SoftHSM2 token" in made.stdout) == (request.param == "softhsm"), made.stdout
    config = directory / "config.toml"
    text = config.read_text().replace("checkpoint_every = 1000", "checkpoint_every = 100")
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    written = subprocess.run(
        [sys.executable, "-c", WRITE_RECORDS, str(config), "250"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert written.returncode == 0, written.stderr
    return config, written.stdout


def test_init_gives_a_setup_that_verifies(setup) -> None:
    config, _ = setup
    proc = securecore("audit", "verify", "-c", str(config))
    assert proc.stdout.startswith("audit log OK: 250 records, 3 signed checkpoints"), proc.stdout
    database = (config.parent / "data" / "audit.db").read_bytes()
    assert b"pw-123" not in database


def test_verify_names_the_first_bad_record_and_fails(setup) -> None:
    config, _ = setup
    with sqlite3.connect(config.parent / "data" / "audit.db") as db:
        db.execute(
            "UPDATE audit_records SET entry = CAST(replace(CAST(entry AS TEXT), "
            '\'"actor":"alice"\', \'"actor":"mallory"\') AS BLOB) WHERE seq = 142'
        )
    proc = securecore("audit", "verify", "-c", str(config), check=False)
    assert proc.returncode == 1
    assert "first bad record: 142" in proc.stderr, proc.stderr


def test_prove_prints_a_proof_that_checks_against_the_signed_checkpoint(setup) -> None:
    config, _ = setup
    proof = json.loads(securecore("audit", "prove", "17", "-c", str(config)).stdout)
    assert proof["tree_size"] == 100 and proof["leaf_index"] == 16
    # Check it the RFC 9162 way, independently of securecore.audit.merkle.
    index, size = proof["leaf_index"], proof["tree_size"]
    node = bytes.fromhex(proof["leaf_hash"])
    fn, sn = index, size - 1
    for sibling in map(bytes.fromhex, proof["inclusion_path"]):
        if fn & 1 or fn == sn:
            node = hashlib.sha256(b"\x01" + sibling + node).digest()
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            node = hashlib.sha256(b"\x01" + node + sibling).digest()
        fn, sn = fn >> 1, sn >> 1
    assert sn == 0 and node.hex() == proof["root_hash"]
    assert base64.b64encode(node).decode() in proof["checkpoint"]
    missing = securecore("audit", "prove", "9999", "-c", str(config), check=False)
    assert missing.returncode == 1 and "not in a signed checkpoint yet" in missing.stderr


def test_export_is_checkable_with_the_public_key_alone(setup, tmp_path: Path) -> None:
    config, public_pem = setup
    out = tmp_path / "audit.jsonl"
    securecore("audit", "export", "-c", str(config), "-o", str(out))
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 250 + 3
    assert outside_verifier(lines, public_pem) == 3
    # A record changed in the export no longer matches its checkpoint.
    forged = [
        line.replace('"outcome":"success"', '"outcome":"failure"', 1) if i == 5 else line
        for i, line in enumerate(lines)
    ]
    with pytest.raises(AssertionError, match="checkpoint 100"):
        outside_verifier(forged, public_pem)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[audit]", "[audit]\nchekpoint_every = 5"), "[audit] chekpoint_every: unknown key"),
        (
            ("checkpoint_every = 1000", 'checkpoint_every = "many"'),
            "[audit] checkpoint_every: must be int, not str",
        ),
        (
            ('hmac_key_file = "secrets/audit_hmac_key"', 'hmac_key_file = "secrets/nope"'),
            "[audit] hmac_key_file = ",
        ),
        (('backend = "', 'backend = "vault'), "[keys] backend = 'vault"),
    ],
    ids=["unknown key", "wrong type", "missing file", "bad choice"],
)
def test_a_bad_config_is_refused_naming_the_file_and_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    directory = tmp_path / "dev"
    securecore_lab("init", str(directory), "--software-keys")
    config = directory / "config.toml"
    config.write_text(config.read_text().replace(*change, 1))
    proc = securecore("audit", "verify", "-c", str(config), check=False)
    assert proc.returncode == 2
    assert f"{config}: 1 problem(s)" in proc.stderr and message in proc.stderr, proc.stderr


def test_no_config_and_an_existing_setup_are_clear_errors(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SECURECORE_CONFIG"}
    proc = subprocess.run(
        [sys.executable, "-m", "securecore", "audit", "verify"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert proc.returncode == 2 and "pass -c PATH or set SECURECORE_CONFIG" in proc.stderr
    securecore_lab("init", str(tmp_path / "dev"), "--software-keys")
    again = securecore_lab("init", str(tmp_path / "dev"), check=False)
    assert again.returncode == 2 and "exists already" in again.stderr
