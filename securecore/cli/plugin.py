"""`securecore plugin ticket-store|register`: run the reference plugin; ask a core to
register a running plugin (deploy time)."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from securecore.plugin_sdk.server import PluginError, PluginServer, register_with_core
from securecore.plugin_sdk.ticket_store import TicketStore


def _registration(args: argparse.Namespace) -> dict[str, Any]:
    """What a plugin tells the core about itself, from its command line."""
    return {
        "tls_policy": args.tls_policy,
        "name": args.name,
        "vendor": args.vendor,
        "endpoint": args.endpoint,
        "security_level": args.security_level,
    }


def _register(args: argparse.Namespace) -> int:
    answer = register_with_core(args.core, **_registration(args))
    answer.pop("session", None)  # tokens are not for the terminal or a log
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("state") == "active" else 1


def _register_when_up(args: argparse.Namespace, attempts: int = 30) -> None:
    """Register with the core once this server answers (the core calls it back)."""
    for _ in range(attempts):
        try:
            answer = register_with_core(args.register, **_registration(args))
        except PluginError as error:
            if error.code != "unreachable":
                print(f"registration refused: {error}", flush=True)
                return
            time.sleep(1)
            continue
        print(f"registered: {answer['state']}, trust {answer['score']}", flush=True)
        return


def _ticket_store(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = TicketStore(state_dir / "tickets.db")
    plugin = PluginServer(
        args.name,
        store.handlers(),
        tls_policy=args.tls_policy,
        state_dir=state_dir,
        core_principals=args.core_principal,
    )
    host, _, port = args.listen.rpartition(":")
    if args.register:
        threading.Thread(target=_register_when_up, args=(args,), daemon=True).start()
    plugin.run(host.strip("[]"), int(port))
    return 0


def configure(name: str, plugin: argparse.ArgumentParser) -> None:
    plugins = plugin.add_subparsers(dest="plugin", required=True, metavar="PLUGIN")
    command = plugins.add_parser("ticket-store", help="run the reference plugin")
    command.add_argument("--name", default="ticket-store", help="the plugin's registered name")
    command.add_argument("--tls-policy", required=True, help="the plugin's TLS policy (JSON)")
    command.add_argument("--state-dir", required=True, help="tickets and channel keys (0700)")
    command.add_argument("--listen", default="0.0.0.0:9443", help="HOST:PORT")
    command.add_argument(
        "--core-principal",
        action="append",
        required=True,
        metavar="core/HOST",
        help="a core that may hand over channel keys and call (repeat for each core host)",
    )
    command.add_argument("--register", metavar="CORE_URL", help="register with this core")
    command.add_argument("--endpoint", help="this plugin's URL as the core reaches it")
    command.add_argument("--vendor", default="securecore")
    command.add_argument("--security-level", type=int, default=4)
    command.set_defaults(handler=_ticket_store)

    command = plugins.add_parser(
        "register", help="register a running plugin with the core (the five steps)"
    )
    command.add_argument("--core", required=True, metavar="URL", help="https://CORE:8443")
    command.add_argument("--tls-policy", required=True, help="the plugin's TLS policy (JSON)")
    command.add_argument("--name", required=True, help="the name its certificate carries")
    command.add_argument("--vendor", required=True)
    command.add_argument("--endpoint", required=True, help="https://HOST:PORT the core calls")
    command.add_argument("--security-level", type=int, required=True)
    command.set_defaults(handler=_register)
