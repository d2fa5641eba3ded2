"""The database's backups (roles/postgresql_backup, REQ-HA-12): pgBackRest's repository
on mgmt-01, which holds no data, and its off-site copy on core-03 at the cold site, both
fed by the primary's WAL over mutual TLS, each encrypted under its own passphrase.

Runs after the failover checks: the repository must have followed every new primary
and timeline they made. A commit is then followed into the repository (the backups'
recovery point, measured) and back out of it, restored on a database node beside the
cluster into a scratch directory; the repository is attacked with a file changed
behind its back and a client it does not know.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.support.commands import run
from tests.support.database import SERVICE_TLS, healthy_leader, local_sql, psql_as_service
from tests.support.labhosts import ROOT, lab_spec

SPEC = lab_spec()

REPOSITORY = "mgmt-01"
OFFSITE = "core-03"
# pgBackRest's numbers for them (repoN), which commands run on their hosts name.
REPO = {REPOSITORY: 1, OFFSITE: 2}
STANZA = "securecore"
ARCHIVE_TIMEOUT = 60  # postgresql_ha_archive_timeout: a commit is archived within it
PGBACKREST = f"cd / && sudo -u postgres pgbackrest --stanza={STANZA} --log-level-console=warn"
REPOSITORY_PATH = f"/var/lib/pgbackrest/archive/{STANZA}"


def info(hosts, repository: str = REPOSITORY, *options: str) -> dict:
    command = f"{PGBACKREST} --repo={REPO[repository]} info --output=json {' '.join(options)}"
    return json.loads(hosts[repository].check_output(command))[0]


def newest_archived(hosts, repository: str) -> str:
    """The newest WAL segment in the repository (its 24-digit name)."""
    archives = info(hosts, repository)["archive"]
    return max(archive["max"] for archive in archives if archive.get("max"))


@pytest.mark.parametrize("repository", REPO)
def test_the_repository_has_an_encrypted_full_backup_and_the_wal_since(hosts, repository) -> None:
    stanza = info(hosts, repository)
    assert stanza["status"]["code"] == 0, stanza["status"]
    assert stanza["cipher"] == "aes-256-cbc"
    assert [b for b in stanza["backup"] if b["type"] == "full"], stanza["backup"]
    assert stanza["archive"] and stanza["archive"][-1]["max"]
    # Every WAL segment and backed-up file is ciphertext (OpenSSL's salted format),
    # whatever pgBackRest's compression would have left readable.
    headers = hosts[repository].check_output(
        "find /var/lib/pgbackrest/archive /var/lib/pgbackrest/backup -type f"
        " \\( -path '*/pg_data/*' -o -name '0000*' \\)"
        ' -exec sh -c \'printf "%s " "$1"; head -c 8 "$1"; echo\' _ {} \\;'
    )
    files = [line.rsplit(" ", 1) for line in headers.splitlines()]
    assert len(files) > 10
    assert {header for _, header in files} == {"Salted__"}, [f for f in files if f[1] != "Salted__"]
    # No database node holds a passphrase.
    for node in ("core-01", "core-02"):
        assert "cipher-pass" not in hosts[node].file("/etc/pgbackrest.conf").content_string


def test_each_repository_has_a_passphrase_of_its_own(hosts) -> None:
    """A copy of one repository (or its host) stolen unlocks nothing of the other: the
    passphrases differ. Compared by digest on each host: no passphrase leaves it."""
    digests = {
        name: hosts[name].check_output(
            "sed -n 's/^repo[0-9]*-cipher-pass=//p' /etc/pgbackrest.conf | sha256sum"
        )
        for name in REPO
    }
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert empty not in digests.values() and len(set(digests.values())) == len(REPO), digests


def test_a_commit_is_in_the_repository_within_the_archive_timeout_and_restores(hosts) -> None:
    primary = healthy_leader(hosts)
    restorer = next(n for n in ("core-01", "core-02") if n != primary)
    table, marker = f"backup_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    psql_as_service(hosts[primary], f"CREATE TABLE {table} (marker TEXT)")
    insert = f"INSERT INTO {table} VALUES ('{marker}')"  # noqa: S608 - the test's own names
    psql_as_service(hosts[primary], insert)
    committed = time.monotonic()
    # The segment holding the commit; it is archived once full or archive_timeout old.
    segment = local_sql(hosts[primary], "SELECT pg_walfile_name(pg_current_wal_lsn())").strip()
    archived_after = {}
    for repository in REPO:  # both, the off-site one too
        while newest_archived(hosts, repository)[8:] < segment[8:]:  # timelines aside
            waited = time.monotonic() - committed
            assert waited < ARCHIVE_TIMEOUT + 30, f"{segment} not archived in {repository}"
            time.sleep(2)
        archived_after[repository] = time.monotonic() - committed
    scratch, socket = f"/var/lib/postgresql/restore-{table}", f"/tmp/restore-{table}"
    select = f"SELECT marker FROM {table}"  # noqa: S608 - the test's own table
    # Beside the cluster: another port, no TCP, its own socket directory, no archiving.
    server_options = (
        f"-p 5499 -c listen_addresses= -c unix_socket_directories={socket}"
        " -c archive_mode=off -c synchronous_standby_names= -c hot_standby=on"
    )
    node = hosts[restorer]
    try:
        # From the primary site's repository (repo1); the drill restores from the other.
        node.check_output(
            f"{PGBACKREST} --repo=1 restore --pg1-path={scratch} --archive-mode=off --type=default"
        )
        # Recovery replays the archive to its end; the restored copy is read there.
        node.check_output(
            f"sudo -u postgres mkdir -p {socket} && cd / && sudo -u postgres"
            f" /usr/lib/postgresql/15/bin/pg_ctl -D {scratch} -w -t 120 -l {scratch}.log start"
            f" -o {shlex.quote(server_options)}"
        )
        deadline = time.monotonic() + 60
        while True:
            found = node.run(
                f"cd / && sudo -u postgres psql -h {socket} -p 5499 -At -d securecore"
                f" -c {shlex.quote(select)}"
            )
            if found.stdout.split() == [marker] or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert found.stdout.split() == [marker], found.stderr
    finally:
        node.run(
            f"cd / && sudo -u postgres /usr/lib/postgresql/15/bin/pg_ctl -D {scratch} -m immediate"
            f" stop; rm -rf {scratch} {scratch}.log {socket}"
        )
        psql_as_service(hosts[primary], f"DROP TABLE IF EXISTS {table}")
    for repository, seconds in archived_after.items():
        print(f"\nbackup: a commit was in {repository}'s repository {seconds:.1f} s after")
    assert max(archived_after.values()) <= ARCHIVE_TIMEOUT + 30


def unit_state(host) -> tuple[str, str]:
    """pgbackrest-full.service's state (inactive once a run ended) and its last result."""
    shown = host.check_output("systemctl show -p ActiveState -p Result pgbackrest-full")
    state = dict(line.split("=", 1) for line in shown.splitlines())
    return state["ActiveState"], state["Result"]


def test_a_backup_that_meets_the_other_repository_s_is_tried_again(hosts) -> None:
    """pgBackRest takes one backup of a cluster at a time (a lock on the primary): the
    off-site repository's backup, started while the primary site's holds the lock, fails
    once and succeeds when tried again (postgresql_backup_retry_seconds, 15 s in the lab),
    as after a timer's catch-up or a long backup would."""
    before = {name: len(info(hosts, name)["backup"]) for name in REPO}
    since = {name: hosts[name].check_output("date +%s") for name in REPO}

    def logged(name: str) -> str:
        return hosts[name].check_output(
            f"journalctl -u pgbackrest-full --since @{since[name]} --no-pager -o cat"
        )

    hosts[REPOSITORY].check_output("systemctl start --no-block pgbackrest-full")
    # Once pgBackRest has started the backup on the primary, it holds the lock.
    deadline = time.monotonic() + 30
    while "backup start archive" not in logged(REPOSITORY):
        assert time.monotonic() < deadline, "the primary site's backup did not start in 30 s"
        time.sleep(0.2)
    hosts[OFFSITE].check_output("systemctl start --no-block pgbackrest-full")
    deadline = time.monotonic() + 180
    while any(unit_state(hosts[name])[0] != "inactive" for name in REPO):
        assert time.monotonic() < deadline, {name: unit_state(hosts[name]) for name in REPO}
        time.sleep(2)
    assert {name: unit_state(hosts[name])[1] for name in REPO} == dict.fromkeys(REPO, "success")
    assert {name: len(info(hosts, name)["backup"]) for name in REPO} == {
        name: count + 1 for name, count in before.items()
    }
    # The off-site backup did meet the lock, and was tried again.
    journal = logged(OFFSITE)
    assert "unable to acquire lock" in journal and "backup attempt 1 failed" in journal, journal


def verify(host) -> str:
    """pgBackRest's verify report. 2.45 exits 0 whatever it finds; a stanza with a bad
    file is reported as "status: error" with the file named. No retry of a file that
    failed (the default retries after 15 s)."""
    return host.check_output(
        f"cd / && sudo -u postgres pgbackrest --stanza={STANZA} --log-level-console=info"
        " --job-retry=0 verify"
    )


def test_a_file_changed_in_the_repository_is_found(hosts) -> None:
    repository = hosts[REPOSITORY]
    assert "status: error" not in verify(repository)
    newest = repository.check_output(
        f"find {REPOSITORY_PATH} -type f -name '0000*.zst' -printf '%T@ %p\\n' | sort -n | tail -1"
    ).split()[1]
    saved = f"/root/{newest.rsplit('/', 1)[1]}.saved"
    repository.check_output(f"cp -p {newest} {saved}")
    try:
        # One bit flipped in the middle of a WAL segment's ciphertext, length unchanged.
        repository.check_output(
            'python3 -c \'import sys; p=sys.argv[1]; d=bytearray(open(p,"rb").read());'
            ' d[len(d)//2]^=1; open(p,"wb").write(d)\' ' + newest
        )
        report = verify(repository)
    finally:
        repository.check_output(f"cp -p {saved} {newest} && rm -f {saved}")
    assert "status: error" in report and newest.rsplit("/", 1)[1] in report, report
    assert "status: error" not in verify(repository)


def test_the_repository_refuses_the_service_s_certificate(hosts) -> None:
    """Whoever runs as the core service on a database node holds the host's site
    certificate, whose name the repository knows as a host: presented to the
    repository (pushing WAL, reading backups) it is refused, since the repository
    trusts only the database cluster's CA."""
    node, scratch = hosts["core-01"], f"/tmp/backup-client-{uuid.uuid4().hex[:8]}"
    node.check_output(f"install -d -m 0700 -o postgres -g postgres {scratch}")
    try:
        for name in ("client.pem", "client.key"):
            node.check_output(
                f"install -o postgres -g postgres -m 0600 {SERVICE_TLS}/{name} {scratch}/{name}"
            )
        options = (
            f"--repo1-host-cert-file={scratch}/client.pem"
            f" --repo1-host-key-file={scratch}/client.key"
        )
        refused = node.run(f"{PGBACKREST} --repo=1 {options} info --output=json")
        known = node.run(f"{PGBACKREST} --repo=1 info --output=json")
    finally:
        node.run(f"rm -rf {scratch}")
    assert known.rc == 0 and json.loads(known.stdout)[0]["status"]["code"] == 0, known.stderr
    answer = refused.stdout + refused.stderr
    assert refused.rc != 0 or json.loads(refused.stdout)[0]["status"]["code"] != 0, answer
    assert "alert unknown ca" in answer, answer  # refused in the handshake


@pytest.mark.parametrize("holder", [REPOSITORY, "core-03"])
def test_the_repository_refuses_a_member_certificate_it_does_not_admit(hosts, holder) -> None:
    """A certificate of the database cluster's CA whose name the repository does not
    admit, copied to a database node for the test: the repository host's own, and the
    cold site's (which keeps the off-site repository and restores from it alone). The
    handshake passes; pgBackRest's tls-server-auth refuses it by name."""
    node, scratch = hosts["core-01"], f"/tmp/backup-client-{uuid.uuid4().hex[:8]}"
    local = Path(tempfile.mkdtemp(prefix="backup-client-"))
    node.check_output(f"install -d -m 0700 -o postgres -g postgres {scratch}")
    try:
        for name in ("database.pem", "database.key"):
            # podman cp, through a 0700 directory of the controller: the key never
            # appears on a command line.
            source = f"{SPEC.container_name(holder)}:{SERVICE_TLS}/{name}"
            subprocess.run(["podman", "cp", source, str(local / name)], check=True, timeout=60)
            target = f"{SPEC.container_name('core-01')}:{scratch}/{name}"
            subprocess.run(["podman", "cp", str(local / name), target], check=True, timeout=60)
        node.check_output(f"chown postgres:postgres {scratch}/* && chmod 0600 {scratch}/*")
        options = (
            f"--repo1-host-cert-file={scratch}/database.pem"
            f" --repo1-host-key-file={scratch}/database.key"
        )
        refused = node.run(f"{PGBACKREST} --repo=1 {options} info --output=json")
    finally:
        node.run(f"rm -rf {scratch}")
        shutil.rmtree(local, ignore_errors=True)
    answer = refused.stdout + refused.stderr
    assert refused.rc != 0 or json.loads(refused.stdout)[0]["status"]["code"] != 0, answer
    assert "access denied" in answer, answer


# --- The configuration (roles/configuration_backup, REQ-BACKUP-3) ---------------------------

CONFIGURATION_DIR = "/var/backups/securecore-configuration"


def applied_configuration() -> tuple[str, bool]:
    """The checkout the lab was converged from: its commit, and whether tracked files
    have changes not committed (then the kept name is COMMIT-modified-TREE)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))


@pytest.mark.parametrize("kept_on", REPO)
def test_every_backup_names_the_configuration_it_was_made_under_which_is_kept(
    hosts, kept_on
) -> None:
    repository = hosts[kept_on]
    commit, modified = applied_configuration()
    in_force = repository.check_output(f"cat {CONFIGURATION_DIR}/in-force.env")
    name = in_force.rsplit("SECURECORE_CONFIGURATION=", 1)[1].strip()
    assert name.startswith(f"{commit}-modified-") if modified else name == commit, in_force
    # Every backup, the first one made by site.yml included, names it (pgBackRest
    # shows a backup's annotations when asked for that backup).
    labels = [backup["label"] for backup in info(hosts, kept_on)["backup"]]
    annotated = {
        label: info(hosts, kept_on, f"--set={label}")["backup"][0].get("annotation", {})
        for label in labels
    }
    assert {a.get("configuration") for a in annotated.values()} == {name}, annotated
    kept = repository.file(f"{CONFIGURATION_DIR}/{name}.tar.gz")
    assert (kept.user, kept.mode) == ("root", 0o400)
    assert repository.file(CONFIGURATION_DIR).mode == 0o700
    members = repository.check_output(f"tar -tzf {kept.path}").splitlines()
    files = {m.split("/", 1)[1] for m in members if not m.endswith("/")}
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert files == set(tracked)  # the lab's secrets (.state/, ignored) are not in it
    if not modified:  # the archive names its commit itself (git get-tar-commit-id reads it)
        header = repository.check_output(f"zcat {kept.path} | head -c 1024 | tr -d '\\0'")
        assert f" comment={commit}\n" in header + "\n"


def test_a_kept_configuration_changed_behind_the_sites_back_stops_the_next_run(hosts) -> None:
    repository = hosts[REPOSITORY]
    name = repository.check_output(f"cat {CONFIGURATION_DIR}/in-force.env").rsplit("=", 1)[1]
    kept, scratch = f"{CONFIGURATION_DIR}/{name}.tar.gz", f"/root/configuration-{name[:8]}"
    repository.check_output(f"cp -p {kept} {scratch}.saved && mkdir -p {scratch}")
    try:
        # Someone with root on the repository host slips a line into the kept playbook.
        repository.check_output(
            f"tar -xzf {kept} -C {scratch}"
            f" && echo '# changed' >> {scratch}/{name}/playbooks/site.yml"
            f" && tar -czf {kept} -C {scratch} {name}"
        )
        refused = run("ansible-playbook", "playbooks/configuration.yml", check=False)
    finally:
        repository.check_output(f"cp -p {scratch}.saved {kept} && rm -rf {scratch}*")
    assert refused.returncode != 0
    assert f"mgmt-01:{kept} does not hold the configuration {name}" in refused.stdout
    assert "1 files differ (playbooks/site.yml)" in refused.stdout
    again = run("ansible-playbook", "playbooks/configuration.yml")
    assert re.search(r"mgmt-01\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", again.stdout)
