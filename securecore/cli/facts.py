"""`securecore facts -c CONFIG`: the state as JSON (securecore.operations.service_facts)."""

from __future__ import annotations

import argparse
import json

from securecore import config as configuration
from securecore.operations import service_facts


def _facts(args: argparse.Namespace) -> int:
    print(json.dumps(service_facts.service_facts(configuration.load(args.config)), sort_keys=True))
    return 0


def configure(name: str, command: argparse.ArgumentParser) -> None:
    command.description = service_facts.__doc__
    command.add_argument("-c", "--config", help="configuration file (or SECURECORE_CONFIG)")
    command.set_defaults(handler=_facts)
