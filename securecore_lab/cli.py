"""The ``securecore-lab`` command line.

``securecore-lab up|down|status`` manages the podman lab; ``securecore-lab init DIR``
makes a development setup. A known failure prints one line,
``securecore-lab: <message>``, and exits 2; `status` exits 3 when a host is not
reachable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from securecore.errors import SecureCoreError
from securecore_lab.errors import LabError

DEFAULT_LAB_INVENTORY = "inventories/lab"


def _lab(args: argparse.Namespace) -> int:
    from securecore_lab.manager import Lab
    from securecore_lab.spec import load_spec

    def log(message: str) -> None:
        if not args.quiet or message.startswith("changed"):
            print(message, flush=True)

    lab = Lab(load_spec(Path(args.inventory)), log=log)
    if args.command == "status":
        rows = lab.status()
        print(f"{'host':<12} {'container':<28} {'state':<10} {'address':<16} {'ssh':<16} reachable")
        for row in rows:
            print(
                f"{row.host:<12} {row.container:<28} {row.state:<10} {row.address:<16} "
                f"127.0.0.1:{row.ssh_port:<6} {'yes' if row.ssh_ok else 'no'}"
            )
        return 0 if all(r.ssh_ok for r in rows) else 3
    changes = lab.up() if args.command == "up" else lab.down(purge_image=args.purge)
    print(f"lab {args.command}: changed={len(changes)}")
    if args.command == "up":
        print(
            f"inventory: {lab.spec.inventory}  ssh key: {lab.spec.ssh_key}\n"
            f"try: ansible -i {args.inventory} all -m ping"
        )
    return 0


def _init(args: argparse.Namespace) -> int:
    from securecore_lab.devsetup import init

    init(args.directory, prefer_hsm=not args.software_keys)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securecore-lab",
        description="SecureCore's development tools: the podman lab and the development setup.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("up", "make the lab's hosts (podman containers) exist and answer over SSH"),
        ("down", "remove the lab's hosts"),
        ("status", "each host's state; exit 3 if one is not reachable"),
    ):
        description = "Create, remove or inspect the lab described by a lab inventory."
        lab = commands.add_parser(name, help=text, description=description)
        lab.add_argument(
            "-i",
            "--inventory",
            default=os.environ.get("SECURECORE_LAB_INVENTORY", DEFAULT_LAB_INVENTORY),
            help="lab inventory directory (default: %(default)s)",
        )
        if name == "down":
            lab.add_argument(
                "--purge", action="store_true", help="also remove the cached base image"
            )
        lab.add_argument("-q", "--quiet", action="store_true", help="print only changes")
        lab.set_defaults(handler=_lab, purge=False)
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
    init.set_defaults(handler=_init)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (LabError, SecureCoreError) as error:
        print(f"securecore-lab: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
