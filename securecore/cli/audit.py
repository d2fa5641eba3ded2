"""`securecore audit verify|prove|export|replicate`: the audit log from the configuration."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from securecore import config as configuration
from securecore.audit import merkle
from securecore.audit.checkpoint import verify_checkpoint
from securecore.audit.export import export_lines
from securecore.audit.factory import (
    anchored_verification,
    open_store,
    pinned_origin_keys,
    self_origin_keys,
)
from securecore.audit.replica import AuditReplica
from securecore.audit.witness import origin_keys_document
from securecore.keys import signing_public_keys
from securecore.keys.factory import open_key_ring
from securecore.tls import TLSPolicy


def _verify(args: argparse.Namespace) -> int:
    config = configuration.load(args.config)
    ring = open_key_ring(config)
    try:
        result, problems = anchored_verification(
            config, ring, tuple(args.witness or ()), restored=args.restored
        )
    finally:
        ring.backend.close()
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if result.ok:
        anchor = (
            f"; proved against the checkpoint of {result.witnessed} records cosigned by "
            f"{', '.join(result.witnesses)}"
            if result.witnessed
            else "; NOT anchored: no witnessed checkpoint"
        )
        print(
            f"audit log OK: {result.size} records, {result.checkpoints} signed checkpoints{anchor}"
        )
        if result.unwitnessed_tail:
            last = result.witnessed or 0
            # Proved against a cosigned checkpoint the backup carried, or none: what after
            # it only the origin's signature (a key the lost site could use) vouches for.
            print(
                f"audit log TAIL: records {last + 1} to {last + result.unwitnessed_tail} "
                f"({result.unwitnessed_tail}) are signed by the origin only: no witnessed "
                "checkpoint within the restored log covers them"
            )
        if result.gap:
            first, cosigned, names = result.gap
            # Not a failure of the log: what the restore could not bring back, named.
            print(
                f"audit log GAP: records {first} to {cosigned} ({cosigned - first + 1}) were "
                f"cosigned by {', '.join(names)} and are not in the restored log"
            )
        return 0
    where = f" (first bad record: {result.first_bad_seq})" if result.first_bad_seq else ""
    print(f"audit log FAILED{where}: {result.problem}", file=sys.stderr)
    return 1


def _public_keys(args: argparse.Namespace) -> int:
    config = configuration.load(args.config)
    ring = open_key_ring(config)
    try:
        print(origin_keys_document(config.get("audit", "origin"), signing_public_keys(ring)))
    finally:
        ring.backend.close()
    return 0


def _prove(args: argparse.Namespace) -> int:
    config = configuration.load(args.config)
    ring = open_key_ring(config)
    store = open_store(config)
    try:
        checkpoints = store.checkpoints()
        covering = [(size, note) for size, note in checkpoints if size >= args.seq]
        if not covering:
            print(
                f"record {args.seq} is not in a signed checkpoint yet (latest: "
                f"{checkpoints[-1][0] if checkpoints else 'none'})",
                file=sys.stderr,
            )
            return 1
        size, note = covering[0]
        # The pinned keys too: in a cluster another host may have signed it.
        keys = {**signing_public_keys(ring), **self_origin_keys(config, ring)}
        checkpoint = verify_checkpoint(note, keys)
        leaves = [merkle.leaf_hash(e) for _, e in itertools.islice(store.entries(), size)]
    finally:
        store.close()
    path = merkle.inclusion_proof(leaves, args.seq - 1)
    if not merkle.verify_inclusion(leaves[args.seq - 1], args.seq - 1, size, path, checkpoint.root):
        print(
            f"record {args.seq}: the stored log does not match checkpoint {size}", file=sys.stderr
        )
        return 1
    print(
        json.dumps(
            {
                "seq": args.seq,
                "leaf_index": args.seq - 1,
                "tree_size": size,
                "leaf_hash": leaves[args.seq - 1].hex(),
                "inclusion_path": [node.hex() for node in path],
                "root_hash": checkpoint.root.hex(),
                "checkpoint": note,
            },
            indent=2,
        )
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    config = configuration.load(args.config)
    store = open_store(config)
    try:
        lines = export_lines(store, config.get("audit", "origin"))
        if args.output:
            with Path(args.output).open("w", encoding="utf-8") as output:
                output.writelines(line + "\n" for line in lines)
        else:
            sys.stdout.writelines(line + "\n" for line in lines)
    finally:
        store.close()
    return 0


def _replicate(args: argparse.Namespace) -> int:
    config = configuration.load(args.config)
    policy_path = config.get("tls", "policy")
    if not policy_path:
        raise configuration.ConfigError(f"{config.path}: [tls] policy is required to replicate")
    directory = args.directory or Path(config.get("service", "data_dir")) / "replica"
    replica = AuditReplica(
        directory, args.source, TLSPolicy.from_file(policy_path), pinned_origin_keys(config)
    )
    try:
        status = replica.pull()
    finally:
        replica.close()
    print(
        f"replica of {status.origin} ({args.source}): {status.size} records "
        f"({status.added} new), checked against its signed checkpoints through "
        f"{status.verified}; the origin holds {status.origin_size}"
    )
    return 0


def configure(name: str, audit: argparse.ArgumentParser) -> None:
    audit.description = "Work with the audit log named by the configuration."
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    for name, handler, text in (
        ("verify", _verify, "recompute the tree; check it against the witnesses' checkpoints"),
        ("public-keys", _public_keys, "print this origin's checkpoint keys (JSON, to pin)"),
        ("prove", _prove, "print the RFC 9162 inclusion proof of a record"),
        ("export", _export, "write the log as JSON Lines (docs/audit-export.md)"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("-c", "--config", help="configuration file (or SECURECORE_CONFIG)")
        if name == "prove":
            action.add_argument("seq", type=int, help="sequence number of the record")
        if name == "verify":
            action.add_argument(
                "--witness",
                action="append",
                metavar="URL",
                help="also ask this witness (https://HOST:PORT; its key must "
                "be in [audit] witness_keys); repeatable",
            )
            action.add_argument(
                "--restored",
                type=int,
                metavar="SIZE",
                help="the log was restored from a backup with SIZE records: records the "
                "witnesses cosigned after them are reported as a gap, not as a removal; with "
                "pinned witness keys, a checkpoint within them that a witness cosigned (kept "
                "in the database) must be proved",
            )
        if name == "export":
            action.add_argument("-o", "--output", help="file to write (default: stdout)")
        action.set_defaults(handler=handler)
    text = "copy another core host's audit log, checked against its signed checkpoints"
    replicate = actions.add_parser("replicate", help=text, description=text)
    replicate.add_argument("-c", "--config", help="configuration file (or SECURECORE_CONFIG)")
    replicate.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="URL",
        help="the origin's service URL (https://HOST:PORT)",
    )
    replicate.add_argument(
        "--directory", type=Path, help="where the copy lives (default: [service] data_dir/replica)"
    )
    replicate.set_defaults(handler=_replicate)
