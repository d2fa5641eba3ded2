#!/usr/bin/python
"""Ansible module: an archive of the configuration a run applies, named by its git commit."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: configuration_archive
short_description: Archive the site's configuration (its git checkout) as this run applies it
description:
  - Runs on the controller. The site's configuration is the git checkout the run comes from
    (inventories, roles, playbooks); this archives it as the run sees it, working tree
    included, so that what was applied can be brought back whatever happens to the checkout.
  - A clean checkout is archived from its commit, named C(COMMIT); the archive carries the
    commit id in its header (C(git get-tar-commit-id) reads it). A checkout whose tracked
    files have changes not committed is archived from a tree of the working state, named
    C(COMMIT-modified-TREE) after the commit it changes and the first 12 hex digits of that
    tree's id, so the same changes always get the same name.
  - Files git does not track are left out, and named in a warning: an untracked file in a
    checkout may be anything, a plaintext secret included, and only what is committed or
    tracked is the site's configuration.
  - Writes the archive to O(dest) once per name; an archive already there is reused.
    Nothing in the checkout changes (the working tree is read through a temporary index; git
    stores the blobs it hashes in the object database, as any C(git add) would).
options:
  path:
    description: A directory inside the git checkout of the configuration.
    type: path
    required: true
  dest:
    description: Controller directory the archive is written to (made if missing).
    type: path
    required: true
  kept:
    description:
      - An archive kept under the same name elsewhere (fetched from the host that keeps it),
        compared file by file with this one; R(differs) names what does not match. Archives
        of one configuration hold the same files whatever tool versions compressed them.
    type: path
"""

RETURN = r"""
name:
  description: The configuration's name - the commit, or the commit with C(-modified-TREE).
  type: str
  returned: always
commit:
  description: The checkout's HEAD commit.
  type: str
  returned: always
tree:
  description: The id of the tree archived (the commit's tree when nothing is modified).
  type: str
  returned: always
modified:
  description: Whether the working tree differs from the commit.
  type: bool
  returned: always
archive:
  description: Path of the archive (gzip-compressed tar) on the controller.
  type: str
  returned: always
sha256:
  description: The archive's SHA-256.
  type: str
  returned: always
differs:
  description: With O(kept) - the files that differ, or are only in one of the two archives.
  type: list
  elements: str
  returned: when O(kept) is given
untracked:
  description: Files in the checkout git does not track (and does not ignore), left out.
  type: list
  elements: str
  returned: always
"""

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile

from ansible.module_utils.basic import AnsibleModule


class GitError(Exception):
    pass


def git(top: str, *args: str, index: str | None = None) -> str:
    env = dict(os.environ, GIT_INDEX_FILE=index) if index else None
    result = subprocess.run(
        ["git", "-C", top, *args], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode:
        raise GitError(f"git {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result.stdout.strip()


def working_tree(top: str) -> str:
    """The tree id of the tracked files as they are now: the real index copied aside
    (its stat data spares hashing unchanged files), every change to them added to it."""
    index = git(top, "rev-parse", "--path-format=absolute", "--git-path", "index")
    with tempfile.TemporaryDirectory(prefix="configuration-index-") as scratch:
        aside = os.path.join(scratch, "index")
        if os.path.exists(index):
            shutil.copyfile(index, aside)
        else:
            git(top, "read-tree", "HEAD", index=aside)
        git(top, "add", "--update", ".", index=aside)
        return git(top, "write-tree", index=aside)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def contents(path: str) -> dict[str, tuple[str, int, bytes]]:
    """Each file and link of a tar archive, by its path below the archive's top
    directory: its kind, whether it is executable, and its content (a link: its
    target). Directories follow from the files in them."""
    found: dict[str, tuple[str, int, bytes]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isdir():
                    continue
                data = (
                    tar.extractfile(member).read() if member.isfile() else member.linkname.encode()
                )
                # Git keeps one bit of a file's mode, executable or not; the rest is
                # the archiving controller's tar.umask, not the configuration.
                executable = int(bool(member.mode & 0o111))
                found[member.name.partition("/")[2]] = (member.type.decode(), executable, data)
    except (tarfile.TarError, OSError, EOFError, AttributeError) as error:
        raise GitError(f"{path}: not a readable archive ({error})") from error
    return found


def differences(ours: str, kept: str) -> list[str]:
    mine, theirs = contents(ours), contents(kept)
    return sorted(
        name for name in mine.keys() | theirs.keys() if mine.get(name) != theirs.get(name)
    )


def archive(path: str, dest: str) -> dict:
    try:
        top = git(path, "rev-parse", "--show-toplevel")
    except (GitError, FileNotFoundError) as error:
        raise GitError(
            f"{path} is not in a git checkout ({error}): the site's configuration is "
            "versioned in git, and each backup of it names its commit"
        ) from error
    commit = git(top, "rev-parse", "--verify", "HEAD^{commit}")
    tree = working_tree(top)
    modified = tree != git(top, "rev-parse", "HEAD^{tree}")
    untracked = git(top, "ls-files", "--others", "--exclude-standard", "-z").split("\0")
    name = f"{commit}-modified-{tree[:12]}" if modified else commit
    os.makedirs(dest, mode=0o700, exist_ok=True)
    target = os.path.join(dest, f"{name}.tar.gz")
    created = not os.path.exists(target)
    if created:
        # Written aside, then renamed: an interrupted run leaves no half archive
        # that a later run would take for a whole one, and two runs at once (two
        # operators, or a run and a check-mode run) never write into one file.
        handle, partial = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".partial")
        os.close(handle)
        try:
            git(
                top,
                "archive",
                "--format=tar.gz",
                f"--prefix={name}/",
                "-o",
                partial,
                tree if modified else commit,
            )
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return {
        "changed": created,
        "name": name,
        "commit": commit,
        "tree": tree,
        "modified": modified,
        "archive": target,
        "sha256": sha256(target),
        "untracked": [name for name in untracked if name],
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "dest": {"type": "path", "required": True},
            "kept": {"type": "path"},
        },
        supports_check_mode=True,
    )
    try:
        # Check mode too: the archive is the controller's copy of its own checkout,
        # which the tasks after this one compare with what the site keeps.
        result = archive(module.params["path"], module.params["dest"])
        if module.params["kept"]:
            result["differs"] = differences(result["archive"], module.params["kept"])
    except GitError as error:
        module.fail_json(msg=f"configuration_archive: {error}")
    if result["untracked"]:
        module.warn(
            f"{len(result['untracked'])} files git does not track are not in the configuration "
            f"backup {result['name']} ({', '.join(result['untracked'][:10])}): commit them, or "
            "ignore them in .gitignore, so that the backup holds what the run applies"
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
