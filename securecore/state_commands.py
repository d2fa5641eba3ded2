"""`securecore backup|restore|emergency-snapshot`: the service's state from the configuration."""

from __future__ import annotations

import argparse

from securecore import config as configuration
from securecore.audit.factory import open_audit_log
from securecore.backup import create_backup, restore_backup
from securecore.emergency import write_emergency_snapshot
from securecore.keys.factory import open_key_ring


def _backup(args: argparse.Namespace) -> int:
    config = configuration.load(args.config)
    manifest = create_backup(config, open_key_ring(config), args.output)
    print(f"backup written: {manifest}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    config = configuration.load(args.config)
    restored = restore_backup(config, open_key_ring(config), args.manifest)
    print(f"restored backup {restored['id']}: {restored['audit_records']} audit records")
    return 0


def _emergency(args: argparse.Namespace) -> int:
    config = configuration.load(args.config)
    ring = open_key_ring(config)
    log = open_audit_log(config, ring)
    try:
        path = write_emergency_snapshot(config, ring, log, reason=args.reason, actor=args.by)
    finally:
        log.close()
    print(f"emergency snapshot written: {path}")
    return 0


def add_parsers(commands) -> None:
    backup = commands.add_parser("backup", help="encrypted, signed online backup of the state")
    backup.add_argument("-c", "--config", help="configuration file (or SECURECORE_CONFIG)")
    backup.add_argument("-o", "--output", help="directory (default: [backup] directory)")
    backup.set_defaults(handler=_backup)

    restore = commands.add_parser(
        "restore", help="verify a backup completely, then replace the state (service stopped)"
    )
    restore.add_argument("-c", "--config", help="configuration file (or SECURECORE_CONFIG)")
    restore.add_argument("manifest", help="the backup's .manifest.json")
    restore.set_defaults(handler=_restore)

    emergency = commands.add_parser(
        "emergency-snapshot",
        help="record an emergency shutdown's reason and the state needed to recover",
    )
    emergency.add_argument("-c", "--config", help="configuration file (or SECURECORE_CONFIG)")
    emergency.add_argument("--reason", required=True, help="why (goes into the audit log)")
    emergency.add_argument("--by", required=True, help="who")
    emergency.set_defaults(handler=_emergency)
