"""The evidence signing key on a real SoftHSM2 token: made there (not extractable),
used by `compliance check` through a PKCS#11 URI with the PIN in a file, verified
offline with the public key alone; a wrong PIN or a missing key is a clear error."""

from __future__ import annotations

from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass

from tests.support.commands import compliance
from tests.support.softhsm import SOFTHSM, make_token

SO_PIN, USER_PIN = "so-pin-5531-0042", "evidence-pin-7731"


@pytest.fixture
def token(softhsm: Path, tmp_path: Path) -> str:
    make_token("evidence", SO_PIN, USER_PIN)
    pin = tmp_path / "evidence.pin"
    pin.write_text(USER_PIN + "\n")
    pin.chmod(0o600)
    return f"pkcs11:token=evidence?module-path={SOFTHSM}&pin-source=file:{pin}"


def test_bundles_signed_by_a_key_on_the_token(token: str, inventory, tmp_path: Path) -> None:
    public = tmp_path / "evidence.pub"
    made = compliance("keygen", "--key", token, "--public-key", str(public))
    assert made.returncode == 0, made.stderr
    uri = made.stdout.split("(not extractable): ")[1].splitlines()[0]
    assert uri.startswith("pkcs11:token=evidence;object=compliance-evidence-v1?")
    evidence = tmp_path / "evidence"
    for _ in range(2):
        run = compliance(
            "check",
            "-i",
            str(inventory),
            "--check",
            "tls.policy",
            "--evidence",
            str(evidence),
            "--signing-key",
            uri,
        )
        assert run.returncode == 1, run.stderr
    checked = compliance("verify", str(evidence), "--public-key", str(public))
    assert checked.returncode == 0, checked.stdout
    assert "2 bundles, 0 with problems, 0 breaks in the chain" in checked.stdout
    # A scheduled run signs its bundle and its retention record in one session.
    root = tmp_path / "scheduled"
    scheduled = compliance(
        "schedule",
        "run",
        "weekly",
        "-i",
        str(inventory),
        "--signing-key",
        uri,
        "--evidence-root",
        str(root),
        "--keep-days",
        "1",
        "--store",
        str(tmp_path / "attestations"),
    )
    assert scheduled.returncode in (1, 2) and "error:" not in scheduled.stderr, scheduled.stderr
    assert compliance("verify", str(root / "weekly"), "--public-key", str(public)).returncode == 0
    # The private key never left the token.
    library = pkcs11.lib(str(SOFTHSM))
    with library.get_token(token_label="evidence").open(user_pin=USER_PIN) as session:
        [private] = session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
        assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]
        assert private[Attribute.LABEL] == "compliance-evidence-v1"
    # The PIN is in no bundle file.
    for path in evidence.rglob("*"):
        assert not path.is_file() or USER_PIN not in path.read_text(errors="ignore")


def test_a_wrong_pin_or_a_missing_key_is_named(token: str, inventory, tmp_path: Path) -> None:
    pin = Path(token.split("pin-source=file:")[1])
    evidence = str(tmp_path / "evidence")
    missing = compliance(
        "check",
        "-i",
        str(inventory),
        "--evidence",
        evidence,
        "--signing-key",
        token.replace("?", ";object=nope-v1?"),
    )
    assert missing.returncode == 2 and "nope-v1" in missing.stderr
    pin.write_text("wrong-pin\n")
    key = token.replace("?", ";object=compliance-evidence-v1?")
    wrong = compliance("check", "-i", str(inventory), "--evidence", evidence, "--signing-key", key)
    assert wrong.returncode == 2 and "token 'evidence'" in wrong.stderr
    assert "wrong-pin" not in wrong.stderr
    pin.chmod(0o644)
    loose = compliance("keygen", "--key", token, "--public-key", str(tmp_path / "p.pem"))
    assert loose.returncode == 2 and "readable by others" in loose.stderr
    bare = compliance("keygen", "--key", token)
    assert bare.returncode == 2 and "--public-key" in bare.stderr
    assert not (tmp_path / "evidence").exists()  # nothing was written by a failed run
