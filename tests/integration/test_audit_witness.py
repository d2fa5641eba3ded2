"""Witnesses anchor the audit log outside the core host: attacks by whoever writes its data.

Real processes on loopback: `securecore serve` (development setup) and one or
two `securecore witness serve`, all over mutual TLS with the development PKI.
The attacker here can do everything the service user (or root on the core
host) can: edit the database, the leaf file and the local checkpoints
together, and even sign new checkpoints with the service's own key. The
witnesses are out of reach.

After a disaster the host is gone and a backup of its database is restored
elsewhere: the witnesses' newest checkpoints are beyond it, and what anchors
the restored log is the cosigned notes the database kept (audit_cosigned).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from securecore import config as configuration
from securecore.audit import merkle
from securecore.audit.checkpoint import (
    EM_DASH,
    Checkpoint,
    note_key_id,
    parse_checkpoint,
    sign_checkpoint,
)
from securecore.audit.factory import witness_keys
from securecore.audit.replica import AuditReplica, ReplicaError
from securecore.audit.witness import (
    WitnessClient,
    cosignature_line,
    cosigner_key_id,
    load_origin_keys,
    origin_keys_document,
    verified_cosigners,
    witnessed_checkpoint,
)
from securecore.keys.factory import open_key_ring
from securecore.tls import TLSPolicy
from tests.support.commands import securecore, securecore_lab
from tests.support.devserver import call, dev_server, free_port, wait_for_port

ORIGIN = "securecore.localhost/audit"


def start_witness(base: Path, dev: Path, name: str, processes: list) -> tuple[str, str, Path]:
    """A witness pinning DEV's checkpoint keys; returns (vkey, url, state dir)."""
    base.mkdir(parents=True)
    state = base / "state"
    state.mkdir(mode=0o700)
    port = free_port()
    config = base / "witness.toml"
    config.write_text(
        f'[witness]\nname = "{name}"\nlisten = "127.0.0.1:{port}"\nstate_dir = "state"\n'
        f'origin_keys = "{dev / "origin-keys.json"}"\ntls_policy = "{dev / "tls/policy.json"}"\n'
    )
    vkey = securecore("witness", "init", "-c", str(config)).stdout.strip()
    log = (base / "witness.log").open("w")
    command = [sys.executable, "-m", "securecore", "witness", "serve", "-c", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    processes.append(process)
    assert wait_for_port(port), (base / "witness.log").read_text()
    return vkey, f"https://127.0.0.1:{port}", state


def core_policy(dev: Path) -> Path:
    """The service's TLS policy with its core certificate as client (as in production)."""
    policy = json.loads((dev / "tls/policy.json").read_text())
    policy["client_certificate"], policy["client_key"] = (
        str(dev / "tls/core.pem"),
        str(dev / "tls/core.key"),
    )
    (dev / "tls/core-policy.json").write_text(json.dumps(policy))
    return dev / "tls/core-policy.json"


@contextmanager
def witnessed_server(tmp_path: Path, witnesses: int = 2, interval: int = 1) -> Iterator[dict]:
    processes: list[subprocess.Popen] = []
    found: dict = {}

    def edit(text: str) -> str:
        dev = tmp_path / "dev"
        core_policy(dev)
        lines, urls = [], []
        for number in range(witnesses):
            vkey, url, state = start_witness(
                tmp_path / f"w{number}", dev, f"w{number}.test", processes
            )
            lines.append(vkey)
            urls.append(f'"w{number}.test" = "{url}"')
            found.setdefault("witnesses", []).append(
                {
                    "url": url,
                    "state": state,
                    "config": state.parent / "witness.toml",
                    "processes": processes,
                }
            )
        (dev / "witness.vkeys").write_text("\n".join(lines) + "\n")
        text = text.replace(
            "checkpoint_interval_seconds = 10", f"checkpoint_interval_seconds = {interval}"
        )
        text = text.replace('policy = "tls/policy.json"', 'policy = "tls/core-policy.json"')
        return text.replace(
            'origin_keys = "origin-keys.json"\n',
            'origin_keys = "origin-keys.json"\n'
            f"witnesses = {{ {', '.join(urls)} }}\n"
            'witness_keys = "witness.vkeys"\nwitness_grace_seconds = 1\n',
        )

    try:
        with dev_server(tmp_path / "dev", edit_config=edit) as server:
            server.update(found)
            yield server
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def witness_size(server, index: int = 0) -> int:
    """The size the witness holds, asked over mutual TLS and verified with pinned keys."""
    dev = server["config"].parent
    context = TLSPolicy.from_file(dev / "tls/core-policy.json").client_context()
    note = WitnessClient("w", server["witnesses"][index]["url"], context).latest(ORIGIN)
    if note is None:
        return 0
    keys = load_origin_keys(dev / "origin-keys.json")[ORIGIN]
    checkpoint, _ = witnessed_checkpoint(
        note, keys, witness_keys(configuration.load(server["config"])), ORIGIN
    )
    return checkpoint.size


def until_witnessed(server, at_least: int, everywhere: bool = True) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sizes = [witness_size(server, i) for i in range(len(server["witnesses"]))]
        if (min(sizes) if everywhere else max(sizes)) >= at_least:
            return min(sizes)
        time.sleep(0.3)
    pytest.fail(f"the witnesses hold {sizes}, not {at_least} records, after 30 s")


def verify(server, *extra: str) -> subprocess.CompletedProcess[str]:
    return securecore("audit", "verify", "-c", str(server["config"]), *extra, check=False)


def first_bad(proc: subprocess.CompletedProcess[str]) -> int:
    found = re.search(r"first bad record: (\d+)", proc.stderr)
    assert proc.returncode == 1 and found, proc.stdout + proc.stderr
    return int(found[1])


def kill(server) -> None:
    server["process"].send_signal(signal.SIGKILL)
    server["process"].wait(10)


def store_size(dev: Path) -> int:
    with sqlite3.connect(dev / "data/audit.db") as db:
        return db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_records").fetchone()[0]


def stored_cosigned(database: Path) -> dict[int, str]:
    """The cosigned notes the audit store keeps, by size."""
    with sqlite3.connect(database) as db:
        return dict(db.execute("SELECT size, note FROM audit_cosigned"))


def until_stored_cosigned(server, size: int, seconds: float = 5.0) -> str:
    """The note of SIZE records that the store keeps with every witness's cosignature,
    once it is there; fails after SECONDS."""
    dev = server["config"].parent
    pinned = witness_keys(configuration.load(server["config"]))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        note = stored_cosigned(dev / "data/audit.db").get(size)
        if note is not None and set(verified_cosigners(note, pinned)[1]) == set(pinned):
            return note
        time.sleep(0.1)
    found = stored_cosigned(dev / "data/audit.db")
    pytest.fail(f"no note of {size} records cosigned by {sorted(pinned)} stored: {found}")


# What the tests do to a record: a readable change that keeps the entry well formed.
EDIT_RECORD = (
    "UPDATE audit_records SET entry = CAST(REPLACE(CAST(entry AS TEXT), "
    "'admin/admin', 'admin/nobody') AS BLOB) WHERE seq = ?"
)


def rewrite_everything_on_the_host(
    dev: Path, *, change: int | None = None, keep: int | None = None, keep_cosigned: bool = False
) -> None:
    """What root on the core host can do: change record CHANGE, or keep only KEEP records;
    then make the leaf file and every local checkpoint match, signed with the real key."""
    with sqlite3.connect(dev / "data/audit.db") as db:
        if change is not None:
            db.execute(EDIT_RECORD, (change,))
        if keep is not None:
            db.execute("DELETE FROM audit_records WHERE seq > ?", (keep,))
        db.execute("DELETE FROM audit_checkpoints")
        entries = [
            bytes(e) for _, e in db.execute("SELECT seq, entry FROM audit_records ORDER BY seq")
        ]
    leaves = [merkle.leaf_hash(e) for e in entries]
    witness = dev / "data/witness"
    (witness / "leaves").write_bytes(b"".join(leaves))
    for path in (witness / "checkpoints").glob("*"):
        path.unlink()
    if not keep_cosigned:
        for path in (witness / "cosigned").glob("*"):
            path.unlink()
    config = configuration.load(dev / "config.toml")
    ring = open_key_ring(config)
    note = sign_checkpoint(ring, Checkpoint(ORIGIN, len(leaves), merkle.root(leaves)))
    (witness / "checkpoints" / f"{len(leaves):012d}").write_text(note)
    with sqlite3.connect(dev / "data/audit.db") as db:
        db.execute("INSERT INTO audit_checkpoints VALUES (?, ?)", (len(leaves), note))


def restart_refused(server) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "securecore", "serve", "-c", str(server["config"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    return proc.stderr


# --- (a) database, leaf file and checkpoints rewritten together ------------------------------


def test_a_rewrite_of_everything_on_the_host_fails_against_the_witnesses(tmp_path: Path) -> None:
    with witnessed_server(tmp_path) as server:
        for _ in range(3):
            call(server, "GET", "/v1/whoami")
        until_witnessed(server, 3)  # two witnessed checkpoints at least: an earlier one ...
        for _ in range(3):
            call(server, "GET", "/v1/whoami")
        size = until_witnessed(server, store_size(server["config"].parent))  # ... and this
        assert verify(server).stdout.startswith("audit log OK"), verify(server).stderr
        assert "cosigned by w0.test, w1.test" in verify(server).stdout
        kill(server)
        dev = server["config"].parent
        # The tampered log is consistent with itself and signed with the service's own key.
        # Cosigned notes the attacker kept (they cannot forge more) name the first record
        # after the last tree a witness proves.
        last = store_size(dev)
        rewrite_everything_on_the_host(dev, change=last, keep_cosigned=True)
        assert 1 < first_bad(verify(server)) <= last
        # With them deleted too, the witnesses' newest checkpoint alone proves nothing.
        rewrite_everything_on_the_host(dev, change=3)
        proc = verify(server)
        assert first_bad(proc) == 1 and "w0.test" in proc.stderr, proc.stderr
        assert "cannot be proved" in proc.stderr
        # The service refuses to open the rewritten log, and signs nothing over it.
        assert "tampered" in restart_refused(server)
        assert witness_size(server) >= size


def test_records_removed_with_their_checkpoints_fail_and_the_service_will_not_start(
    tmp_path: Path,
) -> None:
    with witnessed_server(tmp_path) as server:
        for _ in range(8):
            call(server, "GET", "/v1/whoami")
        held = until_witnessed(server, 8)
        kill(server)
        dev = server["config"].parent
        rewrite_everything_on_the_host(dev, keep=4)
        proc = verify(server)
        # The log is unproved from the first record after the newest checkpoint the
        # witnesses cosigned within the four kept: record 1 when the eight came in one
        # checkpoint, a later one when the checkpoint interval fell among them (a busy
        # machine); at the latest record 5, the first one removed.
        assert first_bad(proc) <= 5 and f"checkpoint of {held}" in proc.stderr, proc.stderr
        assert "records were removed" in proc.stderr, proc.stderr
        assert "tampered" in restart_refused(server)
        # Asked explicitly: the same answer from one named witness alone.
        (dev / "data/witness/cosigned").mkdir(exist_ok=True)
        text = server["config"].read_text()
        server["config"].write_text(re.sub(r"witnesses = \{.*\}\n", "", text))
        assert first_bad(verify(server, "--witness", server["witnesses"][1]["url"])) <= 5


def test_cosigned_checkpoints_reach_the_audit_store(tmp_path: Path) -> None:
    with witnessed_server(tmp_path) as server:
        dev = server["config"].parent
        for _ in range(3):
            call(server, "GET", "/v1/whoami")
        size = until_witnessed(server, store_size(dev))
        # Within a few seconds of the witnesses' cosignatures, the database has them:
        # the note as kept in the witness directory, every cosignature merged.
        note = until_stored_cosigned(server, size)
        assert note == (dev / f"data/witness/cosigned/{size:012d}").read_text()
        keys = load_origin_keys(dev / "origin-keys.json")[ORIGIN]
        pinned = witness_keys(configuration.load(server["config"]))
        checkpoint, names = witnessed_checkpoint(note, keys, pinned, ORIGIN)
        assert checkpoint.size == size and sorted(names) == ["w0.test", "w1.test"]
        # The signed checkpoints stay as the origin signed them (what recovery, the
        # replicas and the witnesses are given).
        with sqlite3.connect(dev / "data/audit.db") as db:
            signed = dict(db.execute("SELECT size, note FROM audit_checkpoints"))
        assert len(parse_checkpoint(signed[size])[1]) == 1


def test_the_final_checkpoint_s_cosignatures_are_stored_when_the_service_stops(
    tmp_path: Path,
) -> None:
    with witnessed_server(tmp_path, interval=3600) as server:
        dev = server["config"].parent
        for _ in range(3):
            call(server, "GET", "/v1/whoami")
        assert stored_cosigned(dev / "data/audit.db") == {}  # no checkpoint was due yet
        # Stopping signs a final checkpoint; the witnesses cosign it while the service
        # closes, after its writer has stopped: it still reaches the database.
        server["process"].send_signal(signal.SIGTERM)
        # (uvicorn ends with the signal it handled once it has shut down)
        assert server["process"].wait(30) in (0, -signal.SIGTERM)
        size = store_size(dev)
        note = stored_cosigned(dev / "data/audit.db").get(size)
        assert note is not None, stored_cosigned(dev / "data/audit.db")
        pinned = witness_keys(configuration.load(server["config"]))
        assert sorted(verified_cosigners(note, pinned)[1]) == ["w0.test", "w1.test"]


@pytest.fixture(scope="module")
def lost_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A site backed up, then lost: {"server" (stopped; its witnesses run on), "dev",
    "backup" (a copy of its audit database), "kept" (the records in it), "anchors" (the
    sizes of the cosigned notes in it, three at least, the newest of all KEPT records),
    "held" (the size the witnesses hold, beyond KEPT)}. The records after the oldest
    anchor span more than the checkpoint interval and the witness grace (1 s each):
    3 s pass between the second and the third anchor."""
    tmp_path = tmp_path_factory.mktemp("lost-site")
    with witnessed_server(tmp_path) as server:
        dev = server["config"].parent
        for calls in (3, 1, 2):
            for _ in range(calls):
                call(server, "GET", "/v1/whoami")
            until_stored_cosigned(server, until_witnessed(server, store_size(dev)))
            if calls == 1:
                time.sleep(3.0)
        backup = tmp_path / "backup.db"
        with sqlite3.connect(dev / "data/audit.db") as live, sqlite3.connect(backup) as copy:
            live.backup(copy)
        kept = store_size(dev)
        anchors = sorted(stored_cosigned(backup))
        assert len(anchors) >= 3 and anchors[-1] == kept, (anchors, kept)
        for _ in range(4):
            call(server, "GET", "/v1/whoami")
        held = until_witnessed(server, store_size(dev))
        kill(server)
        yield {
            "server": server,
            "dev": dev,
            "backup": backup,
            "kept": kept,
            "anchors": anchors,
            "held": held,
        }


def restore(site: dict) -> Path:
    """The host is lost; a new one has the backup and nothing of the old host's own
    (no leaf file, no cosigned notes in its witness directory). Its database's path."""
    dev = site["dev"]
    for journal in dev.glob("data/audit.db-*"):
        journal.unlink()
    # A file of its own (another inode): this process may still hold the lost one open.
    shutil.copyfile(site["backup"], dev / "data/restored.db")
    (dev / "data/restored.db").replace(dev / "data/audit.db")
    shutil.rmtree(dev / "data/witness")
    (dev / "data/witness").mkdir()
    return dev / "data/audit.db"


def rewrite_before_the_backup(database: Path, seq: int) -> None:
    """What whoever ran the lost site's database, with the use of its signing key,
    could do before the backup: change record SEQ and sign every checkpoint anew over
    the changed tree. The cosigned notes they cannot make again."""
    ring = open_key_ring(configuration.load(database.parents[1] / "config.toml"))
    with sqlite3.connect(database) as db:
        db.execute(EDIT_RECORD, (seq,))
        (entry,) = db.execute("SELECT entry FROM audit_records WHERE seq = ?", (seq,)).fetchone()
        assert b"admin/nobody" in bytes(entry)
        leaves = [
            merkle.leaf_hash(bytes(e))
            for (e,) in db.execute("SELECT entry FROM audit_records ORDER BY seq")
        ]
        for (size,) in db.execute("SELECT size FROM audit_checkpoints").fetchall():
            note = sign_checkpoint(ring, Checkpoint(ORIGIN, size, merkle.root(leaves[:size])))
            db.execute("UPDATE audit_checkpoints SET note = ? WHERE size = ?", (note, size))


def test_a_log_restored_from_a_backup_names_its_gap_and_still_fails_if_edited(
    lost_site: dict,
) -> None:
    server, kept, held = lost_site["server"], lost_site["kept"], lost_site["held"]
    database = restore(lost_site)
    # Unflagged, a log the host never wrote (no leaf file) with its end missing fails.
    assert first_bad(verify(server)) == 1
    restored = verify(server, f"--restored={kept}")
    assert restored.returncode == 0, restored.stderr
    assert f"audit log OK: {kept} records" in restored.stdout, restored.stdout
    # Anchored by the cosigned notes the backup carried, not by a witness's newest.
    anchor = f"proved against the checkpoint of {kept} records cosigned by w0.test, w1.test"
    assert anchor in restored.stdout, restored.stdout
    assert "TAIL" not in restored.stdout, restored.stdout
    gap = f"records {kept + 1} to {held} ({held - kept}) were cosigned by"
    assert gap in restored.stdout, restored.stdout
    # The restored count is the store's, not a number that excuses more.
    for wrong in (kept + 1, -1):
        refused = verify(server, f"--restored={wrong}")
        assert refused.returncode == 1 and "the restore brought back" in refused.stderr
    # The flag excuses the missing end only: an edited record still fails.
    with sqlite3.connect(database) as db:
        db.execute(EDIT_RECORD, (2,))
    edited = verify(server, f"--restored={kept}")
    assert edited.returncode == 1, edited.stdout
    assert re.search(r"does not match its signed checkpoint|cosigned \(rewritten\)", edited.stderr)


def test_a_restored_log_names_the_records_after_its_newest_cosigned_checkpoint(
    lost_site: dict,
) -> None:
    server, kept, oldest = lost_site["server"], lost_site["kept"], lost_site["anchors"][-2]
    database = restore(lost_site)
    with sqlite3.connect(database) as db:  # the backup was taken before the newest one
        db.execute("DELETE FROM audit_cosigned WHERE size > ?", (oldest,))
    restored = verify(server, f"--restored={kept}")
    assert restored.returncode == 0, restored.stderr
    assert f"proved against the checkpoint of {oldest} records" in restored.stdout
    tail = f"audit log TAIL: records {oldest + 1} to {kept} ({kept - oldest}) are signed by"
    assert tail in restored.stdout, restored.stdout


def test_a_restored_log_whose_newer_checkpoints_were_removed_fails_at_its_own_end(
    lost_site: dict,
) -> None:
    """Whoever could write the lost site's database (no signing key needed) removed the
    checkpoints and cosigned notes after an early one, to pass off what follows as the
    tail no witness saw yet: those records were due under a witnessed checkpoint well
    before the backup's last record."""
    server, kept, oldest = lost_site["server"], lost_site["kept"], lost_site["anchors"][0]
    database = restore(lost_site)
    with sqlite3.connect(database) as db:
        db.execute("DELETE FROM audit_cosigned WHERE size > ?", (oldest,))
        db.execute("DELETE FROM audit_checkpoints WHERE size > ?", (oldest,))
    proc = verify(server, f"--restored={kept}")
    assert proc.returncode == 1, proc.stdout
    assert f"record {oldest + 1} was written at " in proc.stderr, proc.stderr
    assert "before the restored log's last record" in proc.stderr, proc.stderr


def test_a_log_rewritten_and_re_signed_before_the_backup_fails_against_its_cosigned_notes(
    lost_site: dict,
) -> None:
    server, kept = lost_site["server"], lost_site["kept"]
    rewrite_before_the_backup(restore(lost_site), kept)
    proc = verify(server, f"--restored={kept}")
    assert proc.returncode == 1, proc.stdout
    assert "cannot be proved" in proc.stderr, proc.stderr
    assert f"the tree of its first {kept} records is not the one witness" in proc.stderr


def test_a_rewritten_log_restored_without_its_cosigned_notes_is_not_anchored(
    lost_site: dict,
) -> None:
    server, kept = lost_site["server"], lost_site["kept"]
    database = restore(lost_site)
    rewrite_before_the_backup(database, kept)
    with sqlite3.connect(database) as db:
        db.execute("DELETE FROM audit_cosigned")
    proc = verify(server, f"--restored={kept}")
    assert proc.returncode == 1, proc.stdout
    assert f"the restored log is NOT anchored: no checkpoint within its {kept} records" in (
        proc.stderr
    ), proc.stderr


def test_a_forged_cosigned_note_in_a_restored_log_counts_for_nothing(lost_site: dict) -> None:
    server, kept = lost_site["server"], lost_site["kept"]
    database = restore(lost_site)
    rewrite_before_the_backup(database, kept)
    pinned = witness_keys(configuration.load(server["config"]))
    with sqlite3.connect(database) as db:
        (note,) = db.execute(
            "SELECT note FROM audit_checkpoints WHERE size = ?", (kept,)
        ).fetchone()
        checkpoint = parse_checkpoint(note)[0]
        stamp = int(time.time())
        forger = ed25519.Ed25519PrivateKey.generate()
        # A key of its own under a pinned witness's name, and the pinned key's id over a
        # signature that key did not make: neither verifies with a pinned key.
        own_key = cosignature_line("w0.test", forger, checkpoint, stamp)
        message = f"cosignature/v1\ntime {stamp}\n{checkpoint.text()}".encode()
        blob = (
            cosigner_key_id("w1.test", pinned["w1.test"])
            + stamp.to_bytes(8, "big")
            + forger.sign(message)
        )
        borrowed_id = f"{EM_DASH} w1.test {base64.b64encode(blob).decode()}\n"
        db.execute("DELETE FROM audit_cosigned")
        db.execute("INSERT INTO audit_cosigned VALUES (?, ?)", (kept, note + own_key + borrowed_id))
    proc = verify(server, f"--restored={kept}")
    assert proc.returncode == 1, proc.stdout
    assert "the restored log is NOT anchored" in proc.stderr, proc.stderr


# --- (b) un-checkpointed records removed around a crash -------------------------------------


def test_a_crash_never_shortens_the_leaf_file(tmp_path: Path) -> None:
    with witnessed_server(tmp_path, witnesses=1, interval=3600) as server:
        for _ in range(5):
            call(server, "GET", "/v1/whoami")
        kill(server)  # no checkpoint was due: only the local leaf file knows these records
        dev = server["config"].parent
        leaves = (dev / "data/witness/leaves").read_bytes()
        with sqlite3.connect(dev / "data/audit.db") as db:
            db.execute("DELETE FROM audit_records WHERE seq > 2")
        assert "leaf file" in restart_refused(server)
        assert (dev / "data/witness/leaves").read_bytes() == leaves  # not truncated


def test_unwitnessed_records_removed_after_their_checkpoint_was_due_are_found(
    tmp_path: Path,
) -> None:
    with witnessed_server(tmp_path) as server:
        call(server, "GET", "/v1/whoami")
        base = until_witnessed(server, 1)
        for _ in range(4):
            call(server, "GET", "/v1/whoami")
        written = store_size(server["config"].parent)
        # Not yet checkpointed when written; the interval (1 s) bounds how long that lasts.
        until_witnessed(server, written)
        kill(server)
        dev = server["config"].parent
        rewrite_everything_on_the_host(dev, keep=base, keep_cosigned=False)
        proc = verify(server)
        assert first_bad(proc) <= base + 1 and "removed" in proc.stderr, proc.stderr


# --- (c) the witness refuses forgeries, rollbacks and forks ----------------------------------


def test_the_witness_refuses_forged_rolled_back_and_forked_checkpoints(tmp_path: Path) -> None:
    with witnessed_server(tmp_path, witnesses=1) as server:
        for _ in range(3):
            call(server, "GET", "/v1/whoami")
        held = until_witnessed(server, 3)
        dev = server["config"].parent
        url = server["witnesses"][0]["url"]
        core = WitnessClient(
            "w0", url, TLSPolicy.from_file(dev / "tls/core-policy.json").client_context()
        )
        ring = open_key_ring(configuration.load(server["config"]))
        with sqlite3.connect(dev / "data/audit.db") as db:
            rows = db.execute("SELECT entry FROM audit_records ORDER BY seq").fetchall()
        leaves = [merkle.leaf_hash(bytes(e)) for (e,) in rows]
        # Forged: the same key name, another key.
        other = ec.generate_private_key(ec.SECP256R1())
        genuine = sign_checkpoint(ring, Checkpoint(ORIGIN, held + 1, b"\x01" * 32))
        text, _, line = genuine.rpartition("\n\n")
        kid = line.split(" ")[1]
        from cryptography.hazmat.primitives import hashes

        signature = other.sign(f"{text}\n".encode(), ec.ECDSA(hashes.SHA256()))
        import base64

        blob = base64.b64encode(note_key_id(other.public_key()) + signature).decode()
        forged = f"{text}\n\n\u2014 {kid} {blob}\n"
        status, body = core.add(held, [], forged)
        assert status == 403, body
        # Rollback: a genuine, older checkpoint, presented as if the witness held nothing.
        older = sign_checkpoint(ring, Checkpoint(ORIGIN, 1, merkle.root(leaves[:1])))
        status, body = core.add(0, [], older)
        assert (status, body.strip()) == (409, str(held))
        # A fork at the size held, signed with the real key (the service user can do that).
        fork = sign_checkpoint(ring, Checkpoint(ORIGIN, held, b"\x02" * 32))
        assert core.add(held, [], fork)[0] == 409
        # A bigger tree that does not extend what it holds: the proof cannot verify.
        bigger = sign_checkpoint(ring, Checkpoint(ORIGIN, held + 1, b"\x03" * 32))
        proof = merkle.consistency_proof([*leaves[:held], b"\x04" * 32], held)
        assert core.add(held, proof, bigger)[0] == 422
        # Only core hosts submit.
        admin = WitnessClient(
            "w0", url, TLSPolicy.from_file(dev / "tls/policy.json").client_context()
        )
        assert admin.add(held, [], fork)[0] == 403
        # A client without a site certificate does not get through the handshake.
        bare = TLSPolicy.from_file(dev / "tls/policy.json").client_context(with_certificate=False)
        with pytest.raises(Exception, match="w0"):
            WitnessClient("w0", url, bare).latest(ORIGIN)
        assert witness_size(server) == held


# --- (d) the standby's copy checks signatures with pinned keys -------------------------------


def test_the_replica_refuses_checkpoints_of_a_key_that_is_not_pinned(tmp_path: Path) -> None:
    with witnessed_server(tmp_path, witnesses=1) as server:
        for _ in range(3):
            call(server, "GET", "/v1/whoami")
        until_witnessed(server, 3)
        dev = server["config"].parent
        policy = TLSPolicy.from_file(dev / "tls/core-policy.json")
        source = f"https://127.0.0.1:{server['port']}"
        stray = ec.generate_private_key(ec.SECP256R1()).public_key()
        other = origin_keys_document(ORIGIN, {"securecore-signing-v1": stray})
        (tmp_path / "other.json").write_text(other)
        stranger = AuditReplica(
            tmp_path / "refused", source, policy, load_origin_keys(tmp_path / "other.json")
        )
        with pytest.raises(ReplicaError, match="no signature from a known key"):
            stranger.pull()
        stranger.close()
        pinned = load_origin_keys(dev / "origin-keys.json")
        copy = AuditReplica(tmp_path / "copy", source, policy, pinned)
        assert copy.pull().verified >= 3
        copy.close()
        # A stored note re-signed with another key on the standby's disk: refused at start.
        key = ec.generate_private_key(ec.SECP256R1())
        with sqlite3.connect(tmp_path / "copy/audit.db") as db:
            size, note = db.execute("SELECT size, note FROM audit_checkpoints").fetchone()
            checkpoint = parse_checkpoint(note)[0]
            from cryptography.hazmat.primitives import hashes

            signature = key.sign(checkpoint.text().encode(), ec.ECDSA(hashes.SHA256()))
            import base64

            blob = base64.b64encode(note_key_id(key.public_key()) + signature).decode()
            kid = note.rpartition("\n\n")[2].split(" ")[1]
            db.execute(
                "UPDATE audit_checkpoints SET note = ? WHERE size = ?",
                (f"{checkpoint.text()}\n\u2014 {kid} {blob}\n", size),
            )
        with pytest.raises(ReplicaError, match=r"does not verify|known key"):
            AuditReplica(tmp_path / "copy", source, policy, pinned)


# --- (e) records and no checkpoint --------------------------------------------------------------

APPEND_AND_DIE = """
import os, sys
from securecore import config
from securecore.audit.factory import open_audit_log
from securecore.keys.factory import open_key_ring
settings = config.load(sys.argv[1])
log = open_audit_log(settings, open_key_ring(settings))
for i in range(3):
    log.append("alice", "plugin.call", "p", "success", {})
os._exit(0)  # a crash: no final checkpoint
"""


def test_records_without_a_checkpoint_fail_once_the_interval_has_passed(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    securecore_lab("init", str(dev), "--software-keys")
    config = dev / "config.toml"
    config.write_text(
        config.read_text().replace(
            "checkpoint_interval_seconds = 10",
            "checkpoint_interval_seconds = 15\nwitness_grace_seconds = 0",
        )
    )
    env = {**os.environ}
    subprocess.run(
        [sys.executable, "-c", APPEND_AND_DIE, str(config)], check=True, env=env, timeout=60
    )
    fresh = securecore("audit", "verify", "-c", str(config), check=False)
    assert fresh.returncode == 0 and "NOT anchored" in fresh.stdout, fresh.stderr
    time.sleep(16)
    late = securecore("audit", "verify", "-c", str(config), check=False)
    assert first_bad(late) == 1 and "no signed checkpoint covers it" in late.stderr


# --- a witness that never answers does not hold up requests ----------------------------------


def test_a_silent_witness_never_delays_requests(tmp_path: Path) -> None:
    import socket

    from cryptography.hazmat.primitives.asymmetric import ed25519

    from securecore.audit.witness import vkey

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never answers a byte
    port = silent.getsockname()[1]

    def edit(text: str) -> str:
        dev = tmp_path / "dev"
        (dev / "witness.vkeys").write_text(
            vkey("silent.test", ed25519.Ed25519PrivateKey.generate().public_key()) + "\n"
        )
        text = text.replace("checkpoint_interval_seconds = 10", "checkpoint_interval_seconds = 0")
        return text.replace(
            'origin_keys = "origin-keys.json"\n',
            'origin_keys = "origin-keys.json"\n'
            f'witnesses = {{ "silent.test" = "https://127.0.0.1:{port}" }}\n'
            'witness_keys = "witness.vkeys"\n',
        )

    try:
        with dev_server(tmp_path / "dev", edit_config=edit) as server:
            started = time.monotonic()
            for _ in range(20):  # each one makes a record, and a checkpoint to push
                assert call(server, "GET", "/v1/whoami")[0] == 200
            assert time.monotonic() - started < 10
            status = (
                json.loads(
                    (server["config"].parent / "data/witness/witness-status.json").read_text()
                )
                if (server["config"].parent / "data/witness/witness-status.json").exists()
                else {}
            )
            assert not status or status["silent.test"]["size"] is None
    finally:
        silent.close()


def restart_witness(server, index: int, *, while_down=lambda: None) -> None:
    """Stop witness INDEX and start it again on its port, reading its pins anew
    (what roles/audit_witness's handler does after a new pin)."""
    witness = server["witnesses"][index]
    port = int(witness["url"].rsplit(":", 1)[1])
    command = [sys.executable, "-m", "securecore", "witness", "serve", "-c", str(witness["config"])]
    for process in witness["processes"]:
        if process.args == command and process.poll() is None:
            process.terminate()
            process.wait(10)
    while_down()
    log = (witness["config"].parent / "witness.log").open("a")
    witness["processes"].append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log))
    assert wait_for_port(port), (witness["config"].parent / "witness.log").read_text()


def test_a_key_rotated_while_serving_is_witnessed_once_pinned(tmp_path: Path) -> None:
    """A new signing key version signs the next checkpoint while the service runs.
    Once the witnesses pin it (rotate-keys.yml runs witness.yml), they hold
    checkpoints signed by a version the service did not know at start: the
    service must go on proving its newer checkpoints to them."""
    with witnessed_server(tmp_path) as server:
        dev = server["config"].parent
        for _ in range(3):
            call(server, "GET", "/v1/whoami")
        until_witnessed(server, store_size(dev))
        ring = open_key_ring(configuration.load(server["config"]))
        ring.backend.create_version(ring.signing_key, "ec_p256")
        # The rotation's pins: the witnesses and the core pin every version.
        pinned = securecore("audit", "public-keys", "-c", str(server["config"])).stdout
        (dev / "origin-keys.json").write_text(pinned)
        for index in range(len(server["witnesses"])):
            restart_witness(server, index)
        for _ in range(3):
            call(server, "GET", "/v1/whoami")
        until_witnessed(server, store_size(dev))  # now they hold the new key's checkpoint

        def pushed_in_vain() -> None:  # the service learns the witness's size again after
            for _ in range(3):
                call(server, "GET", "/v1/whoami")
            time.sleep(2.5)

        restart_witness(server, 0, while_down=pushed_in_vain)
        for _ in range(3):
            call(server, "GET", "/v1/whoami")
        until_witnessed(server, store_size(dev))
        assert verify(server).returncode == 0, verify(server).stderr
