"""The ``securecore`` command line.

``securecore lab up|down|status`` manages the lab; ``securecore audit
verify|prove|export`` works with the audit log named by the configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from securecore import __version__, admin_commands, service_facts, state_commands
from securecore.admin_commands import AdminError
from securecore.audit import commands as audit_commands
from securecore.audit import witness
from securecore.audit.checkpoint import CheckpointError
from securecore.audit.log import AuditError
from securecore.audit.replica import ReplicaError
from securecore.audit.witness import WitnessError
from securecore.config import ConfigError
from securecore.devsetup import SetupError
from securecore.devsetup import init as init_development_setup
from securecore.keys.base import KeyStoreError
from securecore.lab import LabError
from securecore.lab.manager import Lab
from securecore.lab.spec import load_spec
from securecore.operations.backup import BackupError
from securecore.operations.emergency import EmergencyError
from securecore.plugin_sdk import commands as plugin_commands
from securecore.plugin_sdk import ticket_store
from securecore.plugin_sdk.server import PluginError
from securecore.server import serve as serve_command
from securecore.tls import TLSPolicyError

DEFAULT_LAB_INVENTORY = "inventories/lab"


def _lab(args: argparse.Namespace) -> int:
    def log(message: str) -> None:
        if not args.quiet or message.startswith("changed"):
            print(message, flush=True)

    lab = Lab(load_spec(Path(args.inventory)), log=log)
    if args.action == "status":
        rows = lab.status()
        print(f"{'host':<12} {'container':<28} {'state':<10} {'address':<16} {'ssh':<16} reachable")
        for row in rows:
            print(
                f"{row.host:<12} {row.container:<28} {row.state:<10} {row.address:<16} "
                f"127.0.0.1:{row.ssh_port:<6} {'yes' if row.ssh_ok else 'no'}"
            )
        return 0 if all(r.ssh_ok for r in rows) else 3
    changes = lab.up() if args.action == "up" else lab.down(purge_image=args.purge)
    print(f"lab {args.action}: changed={len(changes)}")
    if args.action == "up":
        print(
            f"inventory: {lab.spec.inventory}  ssh key: {lab.spec.ssh_key}\n"
            f"try: ansible -i {args.inventory} all -m ping"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securecore",
        description="SecureCore: hardened, HSM-backed core service and its tooling.",
    )
    parser.add_argument("--version", action="version", version=f"securecore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lab = commands.add_parser(
        "lab",
        help="manage the local podman lab that stands in for real hosts",
        description="Create, remove or inspect the lab described by a lab inventory.",
    )
    lab.add_argument("action", choices=["up", "down", "status"])
    lab.add_argument(
        "-i",
        "--inventory",
        default=os.environ.get("SECURECORE_LAB_INVENTORY", DEFAULT_LAB_INVENTORY),
        help="lab inventory directory (default: %(default)s)",
    )
    lab.add_argument(
        "--purge",
        action="store_true",
        help="with down: also remove the cached base image",
    )
    lab.add_argument("-q", "--quiet", action="store_true", help="print only changes")
    lab.set_defaults(handler=_lab)
    init = commands.add_parser(
        "init",
        help="make a development setup (config, keys, CA, database) in a directory",
        description="Create DIR with a configuration, a SoftHSM token (or key files), a "
        "development CA with server and admin certificates, and an empty audit database.",
    )
    init.add_argument("directory", help="an empty or new directory")
    init.add_argument(
        "--software-keys",
        action="store_true",
        help="keep the keys in files even where SoftHSM2 is installed",
    )
    init.set_defaults(
        handler=lambda args: (
            bool(init_development_setup(args.directory, prefer_hsm=not args.software_keys)) and 0
        )
    )
    audit_commands.add_parser(commands)
    witness.add_parser(commands)
    state_commands.add_parsers(commands)
    serve_command.add_parser(commands)
    service_facts.add_parser(commands)
    admin_commands.add_parsers(commands)
    plugin = commands.add_parser("plugin", help="run a plugin built on securecore.plugin_sdk")
    plugins = plugin.add_subparsers(dest="plugin", required=True, metavar="PLUGIN")
    ticket_store.add_parser(plugins)
    plugin_commands.add_parser(plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (
        LabError,
        ConfigError,
        KeyStoreError,
        CheckpointError,
        SetupError,
        BackupError,
        EmergencyError,
        TLSPolicyError,
        AdminError,
        PluginError,
        ReplicaError,
        WitnessError,
        AuditError,
    ) as exc:
        print(f"securecore {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
