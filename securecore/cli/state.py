"""`securecore backup|restore|emergency-snapshot`: the service's state from the configuration."""

from __future__ import annotations

import argparse

from securecore import config as configuration
from securecore.audit.factory import open_audit_log
from securecore.keys.factory import open_key_ring
from securecore.operations.backup import create_backup, prune_backups, restore_backup, verify_backup
from securecore.operations.emergency import write_emergency_snapshot


def _days(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: a whole number of days, at least 1")
    return int(value)


def _backup(args: argparse.Namespace) -> int:
    config = configuration.load(args.config)
    ring = open_key_ring(config)
    manifest = create_backup(config, ring, args.output)
    checked = verify_backup(ring, manifest)  # as a restore would check it
    print(f"backup written: {manifest}")
    print(
        f"backup verified: {checked['audit_records']} audit records, {len(checked['files'])} files"
    )
    if args.keep_days is not None:
        removed, refused = prune_backups(ring, manifest.parent, args.keep_days)
        for backup_id in removed:
            print(f"backup removed (older than {args.keep_days} days): {backup_id}")
        for problem in refused:
            print(f"backup left alone (not verified, not counted): {problem}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    config = configuration.load(args.config)
    ring = open_key_ring(config)
    if args.verify_only:
        checked = verify_backup(ring, args.manifest)
        print(
            f"backup {checked['id']} verified: {checked['audit_records']} audit records, "
            f"{len(checked['files'])} files; nothing was replaced"
        )
        return 0
    restored = restore_backup(config, ring, args.manifest)
    state = ", ".join(restored["state"]) or "no state databases"
    print(f"restored backup {restored['id']}: {restored['audit_records']} audit records, {state}")
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


def configure(name: str, command: argparse.ArgumentParser) -> None:
    command.add_argument("-c", "--config", help="configuration file (or SECURECORE_CONFIG)")
    if name == "backup":
        command.add_argument("-o", "--output", help="directory (default: [backup] directory)")
        command.add_argument(
            "--keep-days",
            type=_days,
            metavar="DAYS",
            help="then remove backups older than DAYS from the directory (never the newest)",
        )
        command.set_defaults(handler=_backup)
    elif name == "restore":
        command.add_argument("manifest", help="the backup's .manifest.json")
        command.add_argument(
            "--verify-only",
            action="store_true",
            help="make every check a restore makes and replace nothing (the service may run)",
        )
        command.set_defaults(handler=_restore)
    else:  # emergency-snapshot
        command.add_argument("--reason", required=True, help="why (goes into the audit log)")
        command.add_argument("--by", required=True, help="who")
        command.set_defaults(handler=_emergency)
