"""The ``securecore`` command line: every parser and handler lives in this package.

The top parser knows each command's name and one-line help; the module that
defines the command's arguments and handler is imported only when that command
runs, so `securecore --help` or `securecore audit verify` do not import the web
server, the HSM library or the PostgreSQL driver they do not use.

A known failure (any `SecureCoreError`) ends the command with one line on stderr,
``securecore: <message>``, and exit status 2; commands keep their own statuses for
findings (e.g. `audit verify` exits 1 on a log that does not verify).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from securecore import __version__
from securecore.errors import SecureCoreError

# name: (module under securecore.cli, one-line help), in the order `--help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "audit": ("audit", "verify, prove or export the tamper-evident audit log"),
    "witness": (
        "witness",
        "a checkpoint witness for other hosts' audit logs (cosigns, refuses rollbacks)",
    ),
    "backup": ("state", "encrypted, signed online backup of the state"),
    "restore": ("state", "verify a backup completely, then replace the state (service stopped)"),
    "emergency-snapshot": (
        "state",
        "record an emergency shutdown's reason and the state needed to recover",
    ),
    "serve": ("serve", "run the core service (mutual TLS 1.3)"),
    "facts": ("facts", "the service's state as JSON (compliance checks; read-only)"),
    "plugins": ("admin", "list, approve, suspend or revoke plugins"),
    "sessions": ("admin", "list or revoke sessions"),
    "acl": ("admin", "list blocks, block an address, unblock an address or a principal"),
    "emergency-shutdown": (
        "admin",
        "stop all traffic at once, revoke sessions, audit the reason, save the snapshot",
    ),
    "recover": ("admin", "end an emergency shutdown"),
    "status": ("admin", "modes, plugins, sessions and the audit log"),
    "incident": ("incident", "open, update, record, verify and close security incidents"),
    "plugin": ("plugin", "run a plugin built on securecore.plugin_sdk"),
}


def _wanted(argv: Sequence[str]) -> set[str]:
    """The command the arguments name (the first one that is not an option), if any."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return {first} if first in COMMANDS else set()


def build_parser(commands_to_load: set[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the commands in `commands_to_load` (default: all) get their
    arguments, the others are listed with their help."""
    parser = argparse.ArgumentParser(
        prog="securecore",
        description="SecureCore: hardened, HSM-backed core service and its tooling.",
    )
    parser.add_argument("--version", action="version", version=f"securecore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, text) in COMMANDS.items():
        command = commands.add_parser(name, help=text)
        if commands_to_load is None or name in commands_to_load:
            importlib.import_module(f"securecore.cli.{module}").configure(name, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_wanted(argv)).parse_args(argv)
    try:
        return int(args.handler(args))
    except SecureCoreError as error:
        print(f"securecore: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
