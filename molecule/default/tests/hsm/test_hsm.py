"""The HSM token and keys on the core lab hosts, used as the service would."""

from __future__ import annotations

import shlex

import pytest

from tests.support.labhosts import connect, lab_spec, ssh_from_controller

SPEC = lab_spec()
CORE = [h for h in SPEC.hosts if h.segment == "core"]
USER_PIN = (SPEC.state_dir / "secrets" / "hsm_user_pin").read_text().strip()


@pytest.fixture(params=CORE, ids=[h.name for h in CORE], scope="module")
def lab_host(request):
    return request.param


@pytest.fixture(scope="module")
def host(lab_host):
    return connect(SPEC, lab_host)


@pytest.fixture(scope="module")
def signing(lab_host) -> str:
    """The first version of the host's signing key: named after the host, so that the
    core hosts' key ids never collide in the pins of their shared audit log."""
    return f"securecore-signing-{lab_host.name}-v1"


def as_service(host, code: str) -> str:
    """Run python-pkcs11 code as the service user; the PIN travels on stdin only."""
    program = (
        "import hashlib, sys, pkcs11\n"
        "from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass\n"
        "from pkcs11.exceptions import AttributeSensitive\n"
        "pin = sys.stdin.readline().strip()\n"
        "tok = pkcs11.lib('/usr/lib/softhsm/libsofthsm2.so').get_token(token_label='securecore')\n"
        "with tok.open(user_pin=pin) as session:\n"
        + "".join(f"    {line}\n" for line in code.strip().splitlines())
    )
    proc = ssh_from_controller(
        SPEC,
        host,
        "-i",
        str(SPEC.ssh_key),
        "-o",
        "IdentitiesOnly=yes",
        command="sudo -u securecore SOFTHSM2_CONF=/etc/securecore/softhsm2.conf "
        f"/opt/securecore/hsm-venv/bin/python -c {shlex.quote(program)}",
        stdin=USER_PIN + "\n",
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_token_directory_belongs_to_the_service_user(host):
    tokens = host.file("/var/lib/securecore/softhsm/tokens")
    assert tokens.user == "securecore" and tokens.mode == 0o700


def test_sign_on_the_token_and_verify_with_the_exported_public_key(lab_host, host, signing):
    signature = as_service(
        lab_host,
        f"""
key = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC, label='{signing}')
print(key.sign(hashlib.sha256(b'checkpoint').digest(), mechanism=Mechanism.ECDSA).hex())
""",
    )
    verify = (
        "import hashlib, sys\n"
        "from cryptography.hazmat.primitives import hashes, serialization\n"
        "from cryptography.hazmat.primitives.asymmetric import ec\n"
        "from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature\n"
        "raw = bytes.fromhex(sys.argv[1]); half = len(raw) // 2\n"
        "der = encode_dss_signature(int.from_bytes(raw[:half], 'big'), "
        "int.from_bytes(raw[half:], 'big'))\n"
        "pub = serialization.load_pem_public_key("
        f"open('/etc/securecore/keys/{signing}.pem', 'rb').read())\n"
        "pub.verify(der, b'checkpoint', ec.ECDSA(hashes.SHA256()))\n"
    )
    assert host.run(f"python3 -c {shlex.quote(verify)} {signature}").rc == 0


def test_private_and_secret_keys_cannot_be_read(lab_host, signing):
    result = as_service(
        lab_host,
        f"""
for cls, kt, label in ((ObjectClass.PRIVATE_KEY, KeyType.EC, '{signing}'),
                       (ObjectClass.SECRET_KEY, KeyType.AES, 'securecore-kek-v1')):
    obj = session.get_key(cls, kt, label=label)
    try:
        obj[Attribute.VALUE]
        print('READABLE', label)
    except AttributeSensitive:
        print('sensitive', label)
""",
    )
    assert result.splitlines() == [
        f"sensitive {signing}",
        "sensitive securecore-kek-v1",
    ]


def test_only_public_keys_are_exported(host, signing):
    listing = host.check_output("ls /etc/securecore/keys")
    assert listing.split() == [f"{signing}.pem"]
    assert "PRIVATE" not in host.file(f"/etc/securecore/keys/{signing}.pem").content_string


def test_pins_are_not_in_the_logs(host):
    assert USER_PIN not in host.check_output("journalctl --no-pager -q | tail -n 2000")
