"""The lab's base image: Debian 12 built locally with debootstrap.

No container registry is reachable from these machines, so the image is made
from Debian's archive and imported into podman. It is cached: it is rebuilt
only when the recipe below changes (its hash is stored as an image label).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from securecore_lab.errors import LabError
from securecore_lab.podman import Podman

SUITE = "bookworm"
# What a minimal real Debian server has that Ansible needs to manage it:
# python3 (+ python3-apt for the apt module), sshd, sudo, systemd, iproute2.
# debootstrap's own set: what a minimal Debian server has that Ansible needs
# to manage it (python3 and python3-apt, sshd, sudo, systemd, iproute2).
PACKAGES = (
    "ca-certificates",
    "iproute2",
    "openssh-server",
    "python3",
    "python3-apt",
    "sudo",
    "systemd",
)
# The site's standard server build, which the roles require (node_exporter and
# curl: roles/monitoring, on every host; journal-remote and stunnel:
# roles/central_logs; acct, chkrootkit, fail2ban with python3-systemd and sysstat:
# roles/hardening's detection and accounting controls). It is in the image so that a converge
# does not fetch it on every host, the plugin zone's through the package proxy
# (roles/package_proxy); the roles still install these where they are missing.
# Installed with apt-get inside the new root, which resolves dependencies
# better than debootstrap does.
SERVER_PACKAGES = (
    "acct",
    "aide",
    "aide-common",
    "apt-show-versions",
    "auditd",
    "chkrootkit",
    "chrony",
    "cracklib-runtime",
    "curl",
    "debsums",
    "fail2ban",
    "libpam-pwquality",
    "libpam-tmpdir",
    "logrotate",
    "needrestart",
    "nftables",
    "opensc",
    "procps",
    "prometheus-node-exporter",
    "python3-asn1crypto",
    "python3-cryptography",
    "python3-packaging",
    "python3-systemd",
    "python3-venv",
    "softhsm2",
    "stunnel4",
    "sysstat",
    "systemd-journal-remote",
    "unattended-upgrades",
)
RECIPE_LABEL = "io.securecore_lab.recipe"

# Run inside the new root filesystem. Each host must get its own SSH host keys,
# so the keys debootstrap generated are removed and sshd creates them at first
# start. The admin account is the one Ansible uses; its key is added per lab.
CONFIGURE_SCRIPT = """\
set -eu
rm -f /etc/ssh/ssh_host_*
mkdir -p /etc/systemd/system/ssh.service.d
cat > /etc/systemd/system/ssh.service.d/lab-host-keys.conf <<'UNIT'
[Service]
# Host keys must exist before the unit's own 'sshd -t' check, so the list of
# ExecStartPre commands is reset and rebuilt with key generation first.
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
UNIT
cat > /etc/apt/sources.list <<SOURCES
deb {mirror} {suite} main
deb {mirror} {suite}-updates main
deb {security_mirror} {suite}-security main
SOURCES
# No service starts inside the chroot while packages are installed.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {server_packages}
# Built current: the updates published since the point release, security
# updates among them, are in the image (site.yml applies later ones).
DEBIAN_FRONTEND=noninteractive apt-get dist-upgrade -y -qq
rm -f /usr/sbin/policy-rc.d
# node_exporter starts only once roles/monitoring has given it its TLS and its
# address (until then it would serve plain HTTP on every address).
systemctl disable prometheus-node-exporter.service >/dev/null 2>&1
# The central logs' daemons (roles/central_logs) wait for their certificates and
# addresses too: until then journal-remote would listen on every address unchecked.
systemctl disable systemd-journal-remote.socket systemd-journal-upload.service \\
    >/dev/null 2>&1 || true
id ansible >/dev/null 2>&1 || useradd --create-home --shell /bin/bash ansible
install -d -m 0700 -o ansible -g ansible /home/ansible/.ssh
echo 'ansible ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/90-lab-ansible
chmod 0440 /etc/sudoers.d/90-lab-ansible
visudo -cf /etc/sudoers.d/90-lab-ansible
# Units that only make sense on hardware or a real console.
systemctl mask getty@tty1.service console-getty.service systemd-udevd.service \\
    systemd-udev-trigger.service systemd-modules-load.service >/dev/null 2>&1 || true
systemctl enable ssh.service
# auditd cannot run in a container (the kernel's audit system belongs to the
# machine); skipped by condition, as roles/hardening also does, so a bare lab
# host is not left "degraded".
mkdir -p /etc/systemd/system/auditd.service.d
printf '[Unit]\nConditionVirtualization=!container\n' \
    > /etc/systemd/system/auditd.service.d/securecore-container.conf
: > /etc/machine-id
rm -f /etc/hostname
apt-get clean
# The package lists stay: a converge's update of them then fetches only what
# changed since the image was built, instead of every list on every host. They
# carry no stamp of a successful update (roles/hardening's), so site.yml still
# refreshes them on its first run.
rm -f /var/cache/apt/*.bin
"""


def recipe_hash(mirror: str) -> str:
    digest = hashlib.sha256()
    for part in (SUITE, mirror, *PACKAGES, *SERVER_PACKAGES, CONFIGURE_SCRIPT):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def security_mirror(mirror: str) -> str:
    """The security archive next to ``mirror`` (deb.debian.org/debian-security)."""
    return mirror.rstrip("/") + "-security"


def image_is_current(podman: Podman, image: str, mirror: str) -> bool:
    info = podman.inspect("image", image)
    if info is None:
        return False
    labels = (info.get("Config") or {}).get("Labels") or {}
    return labels.get(RECIPE_LABEL) == recipe_hash(mirror)


def build_image(podman: Podman, image: str, mirror: str, log: Callable[[str], None]) -> None:
    """Build ``image`` with debootstrap and import it into podman."""
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise LabError("debootstrap is not installed; run 'apt-get install debootstrap'")
    with tempfile.TemporaryDirectory(prefix="securecore-lab-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"building image {image} with debootstrap ({SUITE}, {mirror}); about a minute")
        _run_logged(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            what="debootstrap",
        )
        script = CONFIGURE_SCRIPT.format(
            mirror=mirror,
            suite=SUITE,
            security_mirror=security_mirror(mirror),
            server_packages=" ".join(SERVER_PACKAGES),
        )
        _run_logged(["chroot", str(rootfs), "/bin/sh", "-c", script], what="image configuration")
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
            stdout=subprocess.PIPE,
        )
        try:
            podman.run(
                [
                    "import",
                    "--change",
                    "CMD=/lib/systemd/systemd",
                    "--change",
                    "STOPSIGNAL=SIGRTMIN+3",
                    "--change",
                    f"LABEL={RECIPE_LABEL}={recipe_hash(mirror)}",
                    "-",
                    image,
                ],
                stdin=tar.stdout,
            )
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait()
        if tar.returncode != 0:
            raise LabError(f"tar of {rootfs} failed (exit {tar.returncode})")


def _run_logged(command: list[str], what: str) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise LabError(f"{what} failed (exit {proc.returncode}):\n{tail}")
