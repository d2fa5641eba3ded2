"""`securecore witness serve|init`: a checkpoint witness for other hosts' audit logs."""

from __future__ import annotations

import argparse

from securecore.audit import witness
from securecore.audit.witness import check_state_dir, ensure_key, load_settings, serve, vkey


def _serve(args: argparse.Namespace) -> int:
    serve(load_settings(args.config))
    return 0


def _init(args: argparse.Namespace) -> int:
    """Make the key (first time only; idempotent) and print the verifier key to pin."""
    settings = load_settings(args.config)
    if not settings.state_dir.exists():
        settings.state_dir.mkdir(mode=0o700, parents=True)
    check_state_dir(settings.state_dir)
    print(vkey(settings.name, ensure_key(settings).public_key()))
    return 0


def configure(name: str, command: argparse.ArgumentParser) -> None:
    command.description = (witness.__doc__ or "").split("\n\n")[0]
    actions = command.add_subparsers(dest="witness_command", required=True, metavar="ACTION")
    for action_name, handler, text in (
        ("serve", _serve, "serve add-checkpoint and checkpoint over mutual TLS"),
        ("init", _init, "make the witness key if needed; print its verifier key"),
    ):
        action = actions.add_parser(action_name, help=text, description=text)
        action.add_argument("-c", "--config", required=True, help="the witness's TOML file")
        action.set_defaults(handler=handler)
