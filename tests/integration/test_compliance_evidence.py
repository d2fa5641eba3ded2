"""Evidence bundles: written by a real `compliance check`, verified offline; a changed
file, a removed or inserted bundle and a wrong signature are each found and named."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from compliance.evidence import archive, generate_key, load_signing_key, masked, write_bundle
from tests.support.commands import compliance


def bundle(directory: Path, key, day: int, **why: Any) -> Path:
    """A bundle whose result has the fields earlier versions wrote, and WHY's."""
    results = [
        {
            "check": "ssh.keys_only",
            "host": "core-01",
            "status": "pass",
            "detail": "ok",
            "severity": "high",
            "controls": {},
            "waiver": None,
            **why,
        }
    ]
    facts = {
        "core-01": {
            "sshd": {"passwordauthentication": "no"},
            "vault": {"token": "s.hunter2", "pin_file": "/x"},
        }
    }
    return write_bundle(
        directory, "daily", results, [{"host": "core-01", "error": None}], facts, {"day": day}, key
    )


@pytest.fixture
def key(tmp_path: Path):
    path = tmp_path / "evidence.key"
    generate_key(path)
    return load_signing_key(path)


@pytest.fixture
def pub(tmp_path: Path, key) -> str:
    return str(tmp_path / "evidence.key.pub")


def verify(target: Path, *args: str):
    return compliance("verify", str(target), *args)


def test_a_check_run_writes_a_bundle_that_verifies(inventory, tmp_path: Path) -> None:
    key = tmp_path / "evidence.key"
    made = compliance("keygen", "--key", str(key))
    assert made.returncode == 0 and key.stat().st_mode & 0o777 == 0o600
    again = compliance("keygen", "--key", str(key))
    assert again.returncode == 2 and "never overwritten" in again.stderr
    evidence = tmp_path / "evidence"
    run = compliance(
        "check",
        "-i",
        str(inventory),
        "--check",
        "tls.policy",
        "--evidence",
        str(evidence),
        "--signing-key",
        str(key),
    )
    assert run.returncode == 1, run.stderr  # tls.policy fails on this machine
    [made_bundle] = list(evidence.iterdir())
    names = sorted(str(p.relative_to(made_bundle)) for p in made_bundle.rglob("*") if p.is_file())
    assert names == [
        "assessment-results.json",
        "facts/here.json",
        "junit.xml",
        "manifest.json",
        "report.html",
        "results.json",
        "run.json",
        "signature.json",
    ]
    page = (made_bundle / "report.html").read_text()
    assert "tls.policy" in page
    # Each control the run judged leads to its checks, hosts and files; absent values of
    # the run read as words.
    assert (
        "<tr><td>A.8.24 Use of cryptography</td><td>failed</td><td>tls.policy (here: fail)</td>"
        "<td></td><td>results.json, facts/here.json</td></tr>"
    ) in page
    assert "<h2>Controls: SOC 2" in page
    assert "<th>limit</th><td><code>all hosts</code>" in page
    assert "<th>waivers_sha256</th><td><code>no waivers</code>" in page
    run_json = json.loads((made_bundle / "run.json").read_text())
    assert run_json["previous"] is None and len(run_json["checks_sha256"]) == 64
    assert "<failure" in (made_bundle / "junit.xml").read_text()
    checked = verify(evidence, "--public-key", f"{key}.pub")
    assert checked.returncode == 0, checked.stdout
    assert "1 bundles, 0 with problems, 0 breaks in the chain" in checked.stdout
    private = key.read_text().splitlines()[1]
    assert all(private not in p.read_text() for p in made_bundle.rglob("*") if p.is_file())
    lonely = compliance("check", "-i", str(inventory), "--evidence", str(evidence))
    assert lonely.returncode == 2 and "go together" in lonely.stderr


def test_secrets_never_reach_a_bundle(tmp_path: Path, key) -> None:
    made = bundle(tmp_path / "evidence", key, 1)
    text = "".join(p.read_text() for p in made.rglob("*") if p.is_file())
    assert "hunter2" not in text and '"token": "***"' in text
    assert masked({"a": {"user_pin": "1234", "keys": ["x"]}}) == {
        "a": {"user_pin": "***", "keys": ["x"]}
    }


def test_a_series_begun_by_an_earlier_version_still_verifies(tmp_path: Path, key, pub) -> None:
    # Verifying reads no result's fields: bundles whose results have no rationale
    # still verify, and a newer bundle that has one chains on them.
    evidence = tmp_path / "evidence"
    bundle(evidence, key, 1)
    newer = bundle(
        evidence, key, 2, rationale="REQ-HARD-3 - keys only.", requirements=["REQ-HARD-3"]
    )
    [result] = json.loads((newer / "results.json").read_text())["results"]
    assert result["requirements"] == ["REQ-HARD-3"]
    checked = verify(evidence, "--trusted-key", pub)
    assert checked.returncode == 0, checked.stdout


def test_a_changed_file_is_named(tmp_path: Path, key, pub) -> None:
    made = bundle(tmp_path / "evidence", key, 1)
    results = made / "results.json"
    results.write_text(results.read_text().replace('"pass"', '"fail"'))
    (made / "notes.txt").write_text("added later")
    checked = verify(made, "--trusted-key", pub)
    assert checked.returncode == 1
    assert "results.json: changed" in checked.stdout
    assert "notes.txt: not in the manifest (added)" in checked.stdout


def test_a_removed_or_inserted_day_breaks_the_chain(tmp_path: Path, key, pub) -> None:
    evidence = tmp_path / "evidence"
    days = [bundle(evidence, key, day) for day in (1, 2, 3)]
    assert verify(evidence, "--trusted-key", pub).returncode == 0
    kept = tmp_path / "day2"
    shutil.move(days[1], kept)
    checked = verify(evidence, "--trusted-key", pub)
    assert checked.returncode == 1
    assert (
        f"{days[2].name}: follows {days[1].name}, but the bundle before it is "
        f"{days[0].name}" in checked.stdout
    )
    shutil.move(kept, days[1])
    # A day replaced by another, validly signed, bundle of the same name.
    other = bundle(tmp_path / "elsewhere", key, 2)
    shutil.rmtree(days[1])
    shutil.move(other, days[1])
    replaced = verify(evidence, "--trusted-key", pub)
    assert replaced.returncode == 1 and "was replaced" in replaced.stdout


@pytest.mark.parametrize(
    ("file", "content", "named"),
    [
        ("run.json", {"previous": "yesterday"}, "names its predecessor unreadably"),
        ("run.json", {"previous": {"manifest_sha256": "00"}}, "names its predecessor unreadably"),
        ("manifest.json", {"id": "X", "files": ["results.json"]}, "not a list of files"),
        ("manifest.json", {"id": "X", "files": {"results.json": "00"}}, "no SHA-256"),
        ("manifest.json", {"id": "X", "files": {"/etc/hostname": {"sha256": "00"}}}, "outside"),
        ("manifest.json", ["X"], "not a JSON object"),  # signed by the attacker's own key
    ],
)
def test_a_crafted_bundle_is_named_not_a_traceback(
    tmp_path: Path, key, pub, file: str, content: Any, named: str
) -> None:
    # Whoever can write the evidence directory can write anything into it: verify names
    # the bundle and what is wrong, never stops on it.
    evidence = tmp_path / "evidence"
    _, crafted, _ = (bundle(evidence, key, day) for day in (1, 2, 3))
    if file == "manifest.json" and isinstance(content, dict):
        content["id"] = crafted.name
    (crafted / file).write_text(json.dumps(content))
    if isinstance(content, list):
        other = tmp_path / "attacker.key"
        generate_key(other)
        signer = load_signing_key(other)
        signature = json.loads((crafted / "signature.json").read_text())
        signature["public_key"] = Path(f"{other}.pub").read_text()
        data = (crafted / "manifest.json").read_bytes()
        signed = signer.sign(data, ec.ECDSA(hashes.SHA256()))
        signature["signature"] = base64.b64encode(signed).decode()
        (crafted / "signature.json").write_text(json.dumps(signature))
        alone = verify(crafted, "--trust-embedded-key")
        assert alone.returncode == 1 and "Traceback" not in alone.stderr, alone.stderr
        assert named in alone.stdout, alone.stdout
    checked = verify(evidence, "--trusted-key", pub)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked.stderr
    assert crafted.name in checked.stdout, checked.stdout
    if not isinstance(content, list):
        assert named in checked.stdout, checked.stdout


def test_a_wrong_signature_is_found(tmp_path: Path, key, pub) -> None:
    made = bundle(tmp_path / "evidence", key, 1)
    other_key = tmp_path / "other.key"
    generate_key(other_key)
    pinned = verify(made, "--public-key", f"{other_key}.pub")
    assert pinned.returncode == 1 and "not by a trusted key" in pinned.stdout
    signature = json.loads((made / "signature.json").read_text())
    signature["signature"] = signature["signature"][:-8] + "AAAAAAA="
    (made / "signature.json").write_text(json.dumps(signature))
    broken = verify(made, "--trusted-key", pub)
    assert broken.returncode == 1 and "signature" in broken.stdout


def test_an_archive_is_reproducible_and_verifies(tmp_path: Path, key, pub) -> None:
    made = bundle(tmp_path / "evidence", key, 1)
    first = archive(made).read_bytes()
    assert archive(made).read_bytes() == first  # the same bundle, the same archive
    packed = made.with_name(made.name + ".tar.gz")
    assert verify(packed, "--trusted-key", pub).returncode == 0
    # A changed file inside the archive is found.
    shutil.rmtree(tmp_path / "evidence" / made.name / "facts")
    (made / "facts").mkdir()
    (made / "facts" / "core-01.json").write_text("{}")
    archive(made)
    changed = verify(packed, "--trusted-key", pub)
    assert changed.returncode == 1 and "facts/core-01.json: changed" in changed.stdout
