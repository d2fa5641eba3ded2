"""`securecore plugin register`: ask a core to register a running plugin (deploy time)."""

from __future__ import annotations

import argparse
import json

from securecore.plugin_sdk.server import register_with_core


def register(args: argparse.Namespace) -> int:
    answer = register_with_core(
        args.core, tls_policy=args.tls_policy, name=args.name, vendor=args.vendor,
        endpoint=args.endpoint, security_level=args.security_level,
    )  # fmt: skip
    answer.pop("session", None)  # tokens are not for the terminal or a log
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("state") == "active" else 1


def add_parser(commands) -> None:
    command = commands.add_parser(
        "register", help="register a running plugin with the core (the five steps)"
    )
    command.add_argument("--core", required=True, metavar="URL", help="https://CORE:8443")
    command.add_argument("--tls-policy", required=True, help="the plugin's TLS policy (JSON)")
    command.add_argument("--name", required=True, help="the name its certificate carries")
    command.add_argument("--vendor", required=True)
    command.add_argument("--endpoint", required=True, help="https://HOST:PORT the core calls")
    command.add_argument("--security-level", type=int, required=True)
    command.set_defaults(handler=register)
