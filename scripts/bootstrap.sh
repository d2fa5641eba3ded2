#!/usr/bin/env bash
# Install everything SecureCore needs on a Debian 12 controller: the Debian
# packages (podman and its helpers, debootstrap, SoftHSM, Python tooling) and
# the project's virtualenv in .venv. Safe to run again: it installs only what
# is missing, and reinstalls the Python side only when pyproject.toml changed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"

APT_PACKAGES=(
  # the lab: rootful podman with runc (crun fails on cgroups v1 hybrid hosts)
  podman runc netavark aardvark-dns iptables debootstrap
  # the lab containers' network parameters, set in each one's namespace (nsenter, sysctl)
  util-linux procps
  # controller tooling
  python3 python3-venv python3-dev gcc openssh-client git curl
  # HSM (SoftHSM2 is the lab's PKCS#11 token) and firewall tooling
  softhsm2 opensc nftables openssl
  # independent checks used by the tests (SSH configuration audit; the evidence
  # report rendered in a real headless browser)
  ssh-audit chromium
  # the second audit store (the tests start their own server from its binaries),
  # and the backup metrics' writer read against a real pgBackRest repository
  postgresql pgbackrest
)

log() { printf '==> %s\n' "$*" >&2; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  if [[ $EUID -ne 0 ]]; then
    echo "bootstrap: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# Debian's own Python (3.11 on bookworm), so the controller does not depend
# on whatever other interpreter a machine may have on PATH.
if [[ ! -x "$venv/bin/python" ]]; then
  log "creating virtualenv $venv"
  /usr/bin/python3 -m venv "$venv"
fi
stamp="$venv/.securecore-installed"
# Both distributions: the product (pyproject.toml) and the development tools
# (tools/lab: the podman lab and `securecore-lab init`, kept out of the product wheel).
want=$(cat "$root/pyproject.toml" "$root/tools/lab/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  log "installing the project and its dev tools into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/pip" install --quiet --disable-pip-version-check -e "$root[dev]" -e "$root/tools/lab"
  echo "$want" > "$stamp"
else
  log "virtualenv up to date"
fi

# promtool, amtool and Alertmanager for the monitoring tests (binaries only, no server).
"$root/scripts/install-monitoring-tools.sh" "$venv/lib/securecore-tools"
