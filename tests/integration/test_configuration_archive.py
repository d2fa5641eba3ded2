"""roles/configuration_backup's configuration_archive module on a real git checkout
(REQ-BACKUP-3)."""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support.commands import run_module


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "site"
    (repo / "inventories" / "prod" / "group_vars").mkdir(parents=True)
    (repo / "inventories" / "prod" / "hosts.yml").write_text("all: {}\n")
    (repo / "inventories" / "prod" / "group_vars" / "all.yml").write_text("retention: 30\n")
    (repo / ".gitignore").write_text("output/\n")
    git(repo.parent, "init", "-q", str(repo))
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=op", "-c", "user.email=op@example.org", "commit", "-qm", "site")
    return repo


def archive(repo: Path, dest: Path) -> dict:
    return run_module(
        "configuration_backup",
        "configuration_archive",
        {"path": str(repo / "inventories" / "prod"), "dest": str(dest)},
    )


def members(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def state(repo: Path) -> tuple[str, str, str]:
    """What an archive must not change: HEAD, the status, the index."""
    index = hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest()
    return git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain"), index


def test_a_clean_checkout_is_archived_once_under_its_commit(checkout: Path, tmp_path: Path) -> None:
    commit = git(checkout, "rev-parse", "HEAD")
    first = archive(checkout, tmp_path / "out")
    assert not first["failed"] and first["changed"]
    assert (first["name"], first["commit"], first["modified"]) == (commit, commit, False)
    # The archive names its commit itself, whatever it is called.
    assert (
        subprocess.run(
            ["git", "get-tar-commit-id"],
            stdin=subprocess.Popen(["zcat", first["archive"]], stdout=subprocess.PIPE).stdout,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        == commit
    )
    assert members(first["archive"])[f"{commit}/inventories/prod/group_vars/all.yml"] == (
        b"retention: 30\n"
    )
    again = archive(checkout, tmp_path / "out")
    assert not again["changed"] and again["sha256"] == first["sha256"]


def test_changes_not_committed_are_kept_under_the_commit_they_change(
    checkout: Path, tmp_path: Path
) -> None:
    commit = git(checkout, "rev-parse", "HEAD")
    (checkout / "inventories" / "prod" / "group_vars" / "all.yml").write_text("retention: 7\n")
    before = state(checkout)
    changed = archive(checkout, tmp_path / "out")
    assert changed["modified"] and changed["name"].startswith(f"{commit}-modified-")
    assert changed["name"] == f"{commit}-modified-{changed['tree'][:12]}"
    files = members(changed["archive"])
    assert files[f"{changed['name']}/inventories/prod/group_vars/all.yml"] == b"retention: 7\n"
    # Read through an index of its own: the operator's checkout is as it was.
    assert state(checkout) == before
    # The same changes are the same configuration: one archive, not one per run.
    assert archive(checkout, tmp_path / "out")["changed"] is False
    (checkout / "inventories" / "prod" / "group_vars" / "all.yml").write_text("retention: 1\n")
    other = archive(checkout, tmp_path / "out")
    assert other["changed"] and other["name"] != changed["name"]


def test_an_untracked_file_is_left_out_and_named(checkout: Path, tmp_path: Path) -> None:
    secret = checkout / "inventories" / "prod" / "vault-password.txt"
    secret.write_text("hunter2-not-for-backups\n")
    (checkout / "output").mkdir()
    (checkout / "output" / "report.json").write_text("{}")  # ignored: not mentioned
    result = archive(checkout, tmp_path / "out")
    assert not result["modified"] and result["untracked"] == ["inventories/prod/vault-password.txt"]
    assert "inventories/prod/vault-password.txt" in result["_warnings_text"]
    assert "report.json" not in result["_warnings_text"]
    assert not any(b"hunter2" in data for data in members(result["archive"]).values())


def test_a_directory_outside_git_is_refused_by_name(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    (loose / "inventories" / "prod").mkdir(parents=True)
    result = archive(loose, tmp_path / "out")
    assert result["failed"]
    assert f"{loose}/inventories/prod is not in a git checkout" in result["msg"]


def test_a_kept_archive_is_compared_file_by_file(checkout: Path, tmp_path: Path) -> None:
    made = archive(checkout, tmp_path / "out")
    unpacked = tmp_path / "unpacked"
    with tarfile.open(made["archive"]) as tar:
        tar.extractall(unpacked)  # noqa: S202 - the archive the test just made

    def repacked(name: str) -> str:
        # Another tool, another compression: the same files are the same configuration.
        path = tmp_path / name
        with tarfile.open(path, "w:bz2") as tar:
            tar.add(unpacked / made["name"], arcname=made["name"])
        return str(path)

    same = repacked("same.tar.bz2")
    (unpacked / made["name"] / "inventories" / "prod" / "hosts.yml").write_text("all: {x: 1}\n")
    (unpacked / made["name"] / "extra.yml").write_text("{}\n")
    changed = repacked("changed.tar.bz2")

    def compared(kept: str) -> dict:
        return run_module(
            "configuration_backup",
            "configuration_archive",
            {"path": str(checkout), "dest": str(tmp_path / "out"), "kept": kept},
        )

    assert compared(same)["differs"] == []
    # Another controller's tar.umask (group-writable files): the same configuration.
    umasked = tmp_path / "umasked.tar.gz"
    with tarfile.open(made["archive"]) as source, tarfile.open(umasked, "w:gz") as tar:
        for member in source.getmembers():
            member.mode |= 0o020
            tar.addfile(member, source.extractfile(member) if member.isfile() else None)
    assert compared(str(umasked))["differs"] == []
    assert compared(changed)["differs"] == ["extra.yml", "inventories/prod/hosts.yml"]
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not an archive")
    refused = compared(str(broken))
    assert refused["failed"] and f"{broken}: not a readable archive" in refused["msg"]
