"""Bring the lab up, take it down, report its state.

``up`` converges: it compares what exists (containers, networks, image, key,
known_hosts) with what the inventory describes and changes only what differs,
so a second ``up`` reports ``changed=0``. It copes with what an earlier,
interrupted run may have left behind: stopped, half-made or outdated
containers and networks are repaired or replaced. ``down`` removes every
container, network and file that ``up`` made.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from securecore_lab import image
from securecore_lab.errors import LabError
from securecore_lab.podman import ULIMITS, Podman
from securecore_lab.spec import LabHost, LabSpec

CONFIG_LABEL = "io.securecore_lab.config"
# Capabilities beyond podman's defaults, which a real host has: nftables
# (NET_ADMIN), ping and packet tests (NET_RAW), login records written by
# sshd/PAM (AUDIT_WRITE), AIDE reading every file as its own user
# (DAC_READ_SEARCH). Never SYS_TIME or SYS_ADMIN: those would reach the
# machine the lab runs on.
# The parameters whose change resets others (set first; see _set_network_sysctls).
FORWARDING_KEYS = ("ip_forward", ".forwarding")
CAPABILITIES = ("NET_ADMIN", "NET_RAW", "AUDIT_WRITE", "DAC_READ_SEARCH")
SSH_WAIT_SECONDS = 90
# Secrets the site's roles need, generated per lab (names of inventory variables).
LAB_SECRETS = (
    "hsm_so_pin",
    "hsm_user_pin",
    "pki_ca_passphrase",
    "database_backup_passphrase",
    "database_backup_offsite_passphrase",
)
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"


@dataclass(frozen=True)
class HostStatus:
    host: str
    container: str
    state: str
    address: str
    ssh_port: int
    ssh_ok: bool


class Lab:
    """The lab described by one inventory."""

    def __init__(
        self,
        spec: LabSpec,
        podman: Podman | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.spec = spec
        self.podman = podman or Podman()
        self.log = log
        self.changes: list[str] = []

    # -- reporting ---------------------------------------------------------

    def _changed(self, message: str) -> None:
        self.changes.append(message)
        self.log(f"changed: {message}")

    def _ok(self, message: str) -> None:
        self.log(f"ok: {message}")

    # -- up ----------------------------------------------------------------

    def up(self) -> list[str]:
        self.changes = []
        self._outdated_image: str | None = None
        # Hosts started in this run may need time to boot; others answer at once.
        self._started: set[str] = set()
        self._ensure_image()
        self._ensure_ssh_key()
        self._ensure_secrets()
        for segment in self.spec.segments:
            self._ensure_network(segment)
        self._ensure_routing_without_nat()
        self._remove_unknown_containers()
        for host in self.spec.hosts:
            self._ensure_container(host)
        self._ensure_known_hosts()
        unreachable = [
            h
            for h in self.spec.hosts
            if not self._wait_for_ssh(h, SSH_WAIT_SECONDS if h.name in self._started else 15)
        ]
        if unreachable:
            # A container that podman lists as running may be a leftover whose
            # processes ended with an earlier session: replace it once.
            for host in unreachable:
                self.podman.run(["rm", "--force", self.spec.container_name(host.name)])
                self._changed(f"removed container of {host.name}: it did not answer over SSH")
                self._create_container(host, self._container_config(host))
                self._ensure_authorized_key(host)
            self._ensure_known_hosts()
            for host in unreachable:
                if not self._wait_for_ssh(host, SSH_WAIT_SECONDS):
                    raise LabError(
                        f"{host.name} is not reachable over SSH on 127.0.0.1:{host.ssh_port} "
                        f"after {SSH_WAIT_SECONDS}s; see "
                        f"'podman logs {self.spec.container_name(host.name)}'"
                    )
        if self._outdated_image:
            # Left untagged by the rebuild; no container uses it any more.
            self.podman.run(["rmi", self._outdated_image], check=False)
        return self.changes

    def start(self, host_name: str) -> None:
        """Start the stopped container of one host as `up` starts one: its network
        parameters set again, since it comes back in a new network namespace (as a
        host applies its sysctl.d when it boots). For a host stopped on purpose, such
        as a failover test's killed primary, brought back at a moment of its choosing."""
        if host_name not in {h.name for h in self.spec.hosts}:
            raise LabError(f"no host '{host_name}' in the lab inventory")
        name = self.spec.container_name(host_name)
        self.podman.run(["start", name])
        self._changed(f"started container {name}")
        self._set_network_sysctls(name)

    def _ensure_image(self) -> None:
        if image.image_is_current(self.podman, self.spec.image, self.spec.mirror):
            self._ok(f"image {self.spec.image} is built and current")
        else:
            previous = self.podman.inspect("image", self.spec.image)
            image.build_image(self.podman, self.spec.image, self.spec.mirror, self.log)
            self._changed(f"built image {self.spec.image}")
            if previous is not None:
                self._outdated_image = previous["Id"]
        # Read once: every container's configuration hash includes it.
        self._image_id = (self.podman.inspect("image", self.spec.image) or {}).get("Id")

    def _ensure_ssh_key(self) -> None:
        key = self.spec.ssh_key
        if key.exists() and key.with_suffix(".pub").exists():
            self._ok(f"SSH key {key}")
            return
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key.unlink(missing_ok=True)
        key.with_suffix(".pub").unlink(missing_ok=True)
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"{self.spec.name}-admin",
                "-f",
                str(key),
            ],
            check=True,
        )
        self._changed(f"generated SSH key {key}")

    def _ensure_secrets(self) -> None:
        """Random secrets of the lab (HSM PINs, CA and backup passphrases), 0600, outside git.

        The lab inventory reads them with the file lookup; a real site keeps
        them in ansible-vault instead.
        """
        directory = self.spec.state_dir / "secrets"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in LAB_SECRETS:
            path = directory / name
            if path.exists():
                continue
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(16))
            self._changed(f"generated lab secret {path}")

    def _ensure_network(self, segment_name: str) -> None:
        segment = self.spec.segments[segment_name]
        name = self.spec.network_name(segment_name)
        info = self.podman.inspect("network", name)
        if info is not None:
            subnets = [s.get("subnet") for s in info.get("subnets") or []]
            labels = info.get("labels") or {}
            if (
                subnets == [str(segment.network)]
                and labels.get("io.securecore_lab") == self.spec.name
            ):
                self._ok(f"network {name} ({segment.network}, VLAN {segment.vlan})")
                return
            # Wrong subnet or not ours: replace it, with the containers on it.
            self.podman.run(["network", "rm", "--force", name])
            self._changed(f"removed outdated network {name} (subnets {subnets})")
        self.podman.run(
            [
                "network",
                "create",
                "--subnet",
                str(segment.network),
                "--gateway",
                str(segment.gateway),
                "--label",
                self.spec.label,
                "--label",
                f"io.securecore_lab.vlan={segment.vlan}",
                name,
            ]
        )
        self._changed(f"created network {name} ({segment.network}, VLAN {segment.vlan})")

    def _routing_rules(self) -> list[list[str]]:
        """NAT exemptions between every pair of segments.

        netavark masquerades everything that leaves a podman network, so a
        host in one segment would see traffic from another segment as coming
        from its own gateway, and the zone firewalls could not tell the zones
        apart. Between VLANs a real site routes without NAT; these rules make
        the lab do the same (traffic to the outside is still masqueraded).
        """
        rules = []
        for a in self.spec.segments.values():
            for b in self.spec.segments.values():
                if a.name != b.name:
                    rules.append(
                        [
                            "POSTROUTING",
                            "-s",
                            str(a.network),
                            "-d",
                            str(b.network),
                            "-m",
                            "comment",
                            "--comment",
                            f"{self.spec.name}: {a.name}->{b.name}",
                            "-j",
                            "RETURN",
                        ]
                    )
        return rules

    def _iptables(self, *args: str) -> subprocess.CompletedProcess[str]:
        if shutil.which("iptables") is None:
            raise LabError("iptables is not installed; run 'apt-get install iptables'")
        return subprocess.run(
            ["iptables", "-w", "10", "-t", "nat", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def _ensure_routing_without_nat(self) -> None:
        for rule in self._routing_rules():
            if self._iptables("-C", *rule).returncode == 0:
                continue
            # Inserted first, ahead of netavark's masquerading chains.
            proc = self._iptables("-I", rule[0], "1", *rule[1:])
            if proc.returncode != 0:
                raise LabError(f"iptables could not add {' '.join(rule)}: {proc.stderr.strip()}")
            self._changed(f"route {rule[2]} -> {rule[4]} without NAT")

    def _remove_routing_rules(self) -> None:
        for rule in self._routing_rules():
            while self._iptables("-C", *rule).returncode == 0:
                self._iptables("-D", *rule)
                self._changed(f"removed route {rule[2]} -> {rule[4]} without NAT")

    def _remove_unknown_containers(self) -> None:
        wanted = {self.spec.container_name(h.name) for h in self.spec.hosts}
        for name in self.podman.names_with_label("container", self.spec.label):
            if name not in wanted:
                self.podman.run(["rm", "--force", "--time", "5", name])
                self._changed(f"removed container {name}, no longer in the inventory")

    def _container_config(self, host: LabHost) -> str:
        wanted = {
            "image": self._image_id,
            "network": self.spec.network_name(host.segment),
            "ip": str(host.address),
            "port": host.ssh_port,
            "caps": CAPABILITIES,
            "ulimits": ULIMITS,
            "names": self._host_names(),
            "sysctls": self.spec.network_sysctls,
        }
        return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]

    def _host_names(self) -> list[str]:
        """NAME:ADDRESS of every lab host: each container resolves the others'
        inventory names, as a site's DNS would (peers that check a certificate's
        names, such as pgBackRest's, connect by name)."""
        return [f"{h.name}:{h.address}" for h in self.spec.hosts]

    def _ensure_container(self, host: LabHost) -> None:
        name = self.spec.container_name(host.name)
        config = self._container_config(host)
        info = self.podman.inspect("container", name)
        if info is not None:
            labels = (info.get("Config") or {}).get("Labels") or {}
            state = (info.get("State") or {}).get("Status", "unknown")
            if labels.get(CONFIG_LABEL) != config:
                self.podman.run(["rm", "--force", "--time", "5", name])
                self._changed(f"removed container {name}: its configuration is outdated")
            elif state == "running":
                self._ok(
                    f"container {name} running ({host.address}, ssh 127.0.0.1:{host.ssh_port})"
                )
                # Again, in case it was restarted by other means than this (a new namespace).
                self._set_network_sysctls(name)
                self._ensure_authorized_key(host)
                return
            elif self.podman.run(["start", name], check=False).returncode == 0:
                self._changed(f"started stopped container {name} (was {state})")
                self._started.add(host.name)
                self._set_network_sysctls(name)
                self._ensure_authorized_key(host)
                return
            else:
                self.podman.run(["rm", "--force", name])
                self._changed(f"removed container {name} that could not start (was {state})")
        self._create_container(host, config)
        self._ensure_authorized_key(host)

    def _create_container(self, host: LabHost, config: str) -> None:
        name = self.spec.container_name(host.name)
        args = [
            "run",
            "--detach",
            "--name",
            name,
            "--hostname",
            host.name,
            "--network",
            self.spec.network_name(host.segment),
            "--ip",
            str(host.address),
            # SSH is published on loopback only: the lab is never reachable
            # from outside this machine.
            "--publish",
            f"127.0.0.1:{host.ssh_port}:22",
            "--systemd",
            "always",
            "--label",
            self.spec.label,
            "--label",
            f"{CONFIG_LABEL}={config}",
            "--label",
            f"io.securecore_lab.host={host.name}",
        ]
        for ulimit in ULIMITS:
            args += ["--ulimit", ulimit]
        for entry in self._host_names():
            if not entry.startswith(f"{host.name}:"):  # its own name is podman's entry
                args += ["--add-host", entry]
        for cap in CAPABILITIES:
            args += ["--cap-add", cap]
        args += [self.spec.image, "/lib/systemd/systemd"]
        proc = self.podman.run(args, check=False)
        if proc.returncode != 0:
            raise LabError(
                f"could not start {name} for host '{host.name}' "
                f"(ssh port 127.0.0.1:{host.ssh_port}, address {host.address}): "
                f"{proc.stderr.strip()}"
            )
        self._changed(f"created container {name} ({host.address}, ssh 127.0.0.1:{host.ssh_port})")
        self._started.add(host.name)
        self._set_network_sysctls(name)

    def _set_network_sysctls(self, name: str) -> None:
        """The hardening role's network parameters in the container's network namespace
        (spec.network_sysctls), from this side: its /proc/sys is read-only inside. Set in
        order, forwarding first: the kernel resets conf.all.accept_redirects whenever
        forwarding changes (a new namespace inherits the host's forwarding, on), so set
        after, in an order of podman run --sysctl's choosing, it would undo that one."""
        wanted = self.spec.network_sysctls
        if not wanted:
            return
        info = self.podman.inspect("container", name) or {}
        pid = (info.get("State") or {}).get("Pid")
        if not pid:
            raise LabError(f"container {name} is not running: its network parameters cannot be set")
        ordered = sorted(wanted, key=lambda key: (not key.endswith(FORWARDING_KEYS), key))
        command = ["nsenter", "--target", str(pid), "--net", "--", "sysctl", "-q", "-w"]
        proc = subprocess.run(
            [*command, *(f"{key}={wanted[key]}" for key in ordered)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise LabError(
                f"could not set the network parameters of {name} (hardening_sysctl): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )

    def _ensure_authorized_key(self, host: LabHost) -> None:
        name = self.spec.container_name(host.name)
        pubkey = self.spec.ssh_key.with_suffix(".pub").read_text()
        home = f"/home/{host.user}"
        current = self.podman.exec(name, ["cat", f"{home}/.ssh/authorized_keys"])
        if current.returncode == 0 and current.stdout == pubkey:
            return
        self.podman.run(
            [
                "exec",
                "-i",
                name,
                "sh",
                "-c",
                f"install -d -m 0700 -o {host.user} -g {host.user} {home}/.ssh && "
                f"umask 077 && cat > {home}/.ssh/authorized_keys && "
                f"chown {host.user}:{host.user} {home}/.ssh/authorized_keys",
            ],
            input_bytes=pubkey.encode(),
        )
        self._changed(f"installed the lab SSH key for {host.user}@{host.name}")

    def _host_key(self, host: LabHost) -> str:
        name = self.spec.container_name(host.name)
        deadline = time.monotonic() + SSH_WAIT_SECONDS
        while time.monotonic() < deadline:
            proc = self.podman.exec(name, ["cat", HOST_KEY])
            if proc.returncode == 0 and proc.stdout.strip():
                key_type, key_data = proc.stdout.split()[:2]
                return f"[127.0.0.1]:{host.ssh_port} {key_type} {key_data}"
            time.sleep(1)
        raise LabError(f"{host.name}: sshd did not create {HOST_KEY} within {SSH_WAIT_SECONDS}s")

    def _ensure_known_hosts(self) -> None:
        # Host keys are read from inside each container (out of band), so
        # Ansible checks them strictly instead of trusting on first use.
        lines = "".join(f"{self._host_key(h)}\n" for h in self.spec.hosts)
        path = self.spec.known_hosts
        if path.exists() and path.read_text() == lines:
            self._ok(f"known_hosts {path}")
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(lines)
        self._changed(f"wrote {path}")

    def ssh_command(self, host: LabHost, *command: str) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.spec.ssh_key),
            "-p",
            str(host.ssh_port),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.spec.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=5",
            f"{host.user}@127.0.0.1",
            *command,
        ]

    def _ssh_works(self, host: LabHost) -> bool:
        proc = subprocess.run(
            self.ssh_command(host, "true"),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return proc.returncode == 0

    def _wait_for_ssh(self, host: LabHost, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._ssh_works(host):
                self._ok(f"{host.user}@{host.name} answers over SSH on 127.0.0.1:{host.ssh_port}")
                return True
            time.sleep(1)
        return False

    # -- down ----------------------------------------------------------------

    def down(self, purge_image: bool = False) -> list[str]:
        self.changes = []
        for name in self.podman.names_with_label("container", self.spec.label):
            self.podman.run(["rm", "--force", "--time", "5", name])
            self._changed(f"removed container {name}")
        for name in self.podman.names_with_label("network", self.spec.label):
            self.podman.run(["network", "rm", "--force", name])
            self._changed(f"removed network {name}")
        self._remove_routing_rules()
        if self.spec.state_dir.exists():
            shutil.rmtree(self.spec.state_dir)
            self._changed(f"removed {self.spec.state_dir}")
        if purge_image and self.podman.inspect("image", self.spec.image) is not None:
            self.podman.run(["rmi", "--force", self.spec.image])
            self._changed(f"removed image {self.spec.image}")
        return self.changes

    # -- status ----------------------------------------------------------------

    def status(self) -> list[HostStatus]:
        result = []
        for host in self.spec.hosts:
            name = self.spec.container_name(host.name)
            info = self.podman.inspect("container", name)
            state = "absent" if info is None else (info.get("State") or {}).get("Status", "?")
            ssh_ok = state == "running" and self.spec.known_hosts.exists() and self._ssh_works(host)
            result.append(
                HostStatus(host.name, name, state, str(host.address), host.ssh_port, ssh_ok)
            )
        return result
