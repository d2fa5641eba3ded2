"""`securecore serve -c CONFIG [--workers N]`: the core service (securecore.server.serve)."""

from __future__ import annotations

import argparse

from securecore.server import serve


def configure(name: str, command: argparse.ArgumentParser) -> None:
    command.description = serve.__doc__
    command.add_argument("-c", "--config", help="configuration file (or SECURECORE_CONFIG)")
    command.add_argument(
        "--workers", type=int, help="worker processes (default: [service] workers, 1)"
    )
    command.set_defaults(handler=serve.serve)
