"""A configuration whose backends cannot be loaded is refused with one clear error
naming the file and the key, exit status 2, never a traceback: `securecore serve`
and `securecore audit verify` on broken copies of a development configuration
(PostgreSQL without a dsn or unreachable, unknown backends, wrong types,
malformed TOML, a key store that does not open)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support.commands import securecore, securecore_lab

PASSWORD = "pg-password-8812"  # made up; it must never be printed


def closed_port() -> int:
    """A local port nothing listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def unreachable_dsn() -> str:
    port = closed_port()
    return f"host=127.0.0.1 port={port} dbname=securecore password={PASSWORD} connect_timeout=3"


# (id, (old, new) replaced in the file or text appended, the key the error names,
#  the commands that load that backend)
BOTH = ("serve", "audit verify")
CASES = [
    (
        "state postgresql without dsn",
        ("", '\n[state]\nbackend = "postgresql"\n'),
        "[state] dsn",
        BOTH,
    ),
    (
        "audit postgresql without dsn",
        ("[audit]\n", '[audit]\nbackend = "postgresql"\n'),
        "[audit] dsn",
        BOTH,
    ),
    (
        "unknown state backend",
        ("", '\n[state]\nbackend = "mysql"\n'),
        "[state] backend = 'mysql'",
        BOTH,
    ),
    (
        "unknown audit backend",
        ("[audit]\n", '[audit]\nbackend = "mongodb"\n'),
        "[audit] backend = 'mongodb'",
        BOTH,
    ),
    (
        "state backend of the wrong type",
        ("", "\n[state]\nbackend = 5\n"),
        "[state] backend: must be str, not int",
        BOTH,
    ),
    (
        "audit dsn of the wrong type",
        ("[audit]\n", '[audit]\nbackend = "postgresql"\ndsn = ["host=db"]\n'),
        "[audit] dsn: must be str, not list",
        BOTH,
    ),
    ("malformed TOML", ("", "\n[state\nbackend = \n"), "not valid TOML", BOTH),
    (
        "audit cluster on sqlite",
        ("[audit]\n", "[audit]\ncluster = true\n"),
        "[audit] cluster: requires [audit] backend = 'postgresql'",
        BOTH,
    ),
    (
        "audit cluster of the wrong type",
        ("[audit]\n", '[audit]\ncluster = "yes"\n'),
        "[audit] cluster: must be bool, not str",
        BOTH,
    ),
    (
        "audit cluster without pinned keys",
        (
            'origin_keys = "origin-keys.json"\n',
            'backend = "postgresql"\ndsn = "host=db"\ncluster = true\n',
        ),
        "[audit] origin_keys: required because [audit] cluster = true",
        BOTH,
    ),
    (
        "audit cluster whose pins lack this host's key",
        (
            'origin = "securecore.localhost/audit"\n',
            'origin = "other.localhost/audit"\nbackend = "postgresql"\ndsn = "DSN"\n'
            "cluster = true\n",
        ),
        "[audit] origin_keys pins no key of this host",
        ("serve",),
    ),
    (
        "unreachable audit database",
        ("[audit]\n", '[audit]\nbackend = "postgresql"\ndsn = "DSN"\n'),
        "[audit] dsn: cannot use the PostgreSQL audit store",
        BOTH,
    ),
    (
        "unreachable state database",
        ("", '\n[state]\nbackend = "postgresql"\ndsn = "DSN"\n'),
        "[state] dsn: cannot connect",
        ("serve",),
    ),
]


@pytest.fixture(scope="module")
def software_setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("config") / "dev"
    securecore_lab("init", str(directory), "--software-keys")
    return directory / "config.toml"


def refused(config: Path, command: str, key: str) -> None:
    proc = securecore(*command.split(), "-c", str(config), check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output, output
    assert key in proc.stderr and str(config) in proc.stderr, proc.stderr
    # One error: the file's line, and at most the problem listed under it.
    assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr
    assert PASSWORD not in output


@pytest.mark.parametrize(
    ("change", "key", "commands"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_backend_that_cannot_be_loaded_is_a_configuration_error(
    software_setup: Path, tmp_path: Path, change: tuple[str, str], key: str, commands: tuple
) -> None:
    old, new = change
    text = software_setup.read_text()
    new = new.replace("DSN", unreachable_dsn())
    text = text.replace(old, new, 1) if old else text + new
    config = software_setup.parent / f"bad-{tmp_path.name}.toml"  # relative paths still hold
    config.write_text(text)
    for command in commands:
        refused(config, command, key)


@pytest.fixture(scope="module")
def hsm_setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not Path("/usr/lib/softhsm/libsofthsm2.so").exists():
        pytest.skip("SoftHSM2 is not installed (scripts/bootstrap.sh installs it)")
    directory = tmp_path_factory.mktemp("config-hsm") / "dev"
    made = securecore_lab("init", str(directory))
    assert "SoftHSM2 token" in made.stdout
    return directory / "config.toml"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (
            ('token_label = "securecore"', 'token_label = "other"'),
            "[keys.pkcs11] token_label = 'other': no such token",
        ),
        (
            ('user_pin_file = "secrets/hsm_user_pin"', 'user_pin_file = "secrets/wrong_pin"'),
            "[keys.pkcs11] user_pin_file: the PIN does not open token 'securecore'",
        ),
        (
            ('module = "/usr/lib/softhsm/libsofthsm2.so"', 'module = "/bin/true"'),
            "not a loadable PKCS#11 library",
        ),
    ],
    ids=["unknown token", "wrong PIN", "not a PKCS#11 library"],
)
def test_a_key_store_that_does_not_open_names_its_key(
    hsm_setup: Path, tmp_path: Path, change: tuple[str, str], key: str
) -> None:
    wrong_pin = hsm_setup.parent / "secrets" / "wrong_pin"
    wrong_pin.write_text("00000000")
    wrong_pin.chmod(0o600)
    text = hsm_setup.read_text()
    assert change[0] in text
    config = hsm_setup.parent / f"bad-{tmp_path.name}.toml"
    config.write_text(text.replace(*change))
    for command in BOTH:
        refused(config, command, key)
