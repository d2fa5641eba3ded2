#!/usr/bin/env bash
# promtool, amtool and the Alertmanager binary for the test suite, without a
# server: Debian's prometheus package would start one on the controller. The
# pinned packages are fetched with apt-get download (apt checks them against
# the signed archive, as for an install) and only their binaries are unpacked
# into DIR/bin (scripts/bootstrap.sh: .venv/lib/securecore-tools). Run again,
# it does nothing while DIR holds the pinned versions.
#
# Debian's Alertmanager reads its notification templates from the one path the
# package installs them to (/usr/share/prometheus/alertmanager, built in): they
# are put there too (data files, no service), unless the package owns them.
# Usage: scripts/install-monitoring-tools.sh DIR
set -euo pipefail

dir=${1:?usage: install-monitoring-tools.sh DIR}
# package=version -> the binaries taken from it (the versions roles/monitoring installs)
declare -A PINNED=(
  ["prometheus=2.42.0+ds-5+deb12u1"]="usr/bin/promtool usr/bin/prometheus"
  ["prometheus-alertmanager=0.25.0-1+b4"]="usr/bin/amtool usr/bin/prometheus-alertmanager"
)
want=$(printf '%s\n' "${!PINNED[@]}" | sort)
stamp="$dir/.versions"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "==> monitoring tools present ($dir/bin)" >&2
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt's _apt user writes the download
echo "==> fetching the monitoring tools: ${!PINNED[*]}" >&2
(cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "${!PINNED[@]}") || {
  echo "install-monitoring-tools: apt-get download failed (is the pinned version in apt-cache policy? run apt-get update)" >&2
  exit 1
}
mkdir -p "$dir/bin"
for spec in "${!PINNED[@]}"; do
  package=${spec%%=*}
  mkdir -p "$work/x-$package"
  dpkg-deb -x "$work/${package}"_*.deb "$work/x-$package"
  for binary in ${PINNED[$spec]}; do
    install -m 0755 "$work/x-$package/$binary" "$dir/bin/$(basename "$binary")"
  done
done
templates=/usr/share/prometheus/alertmanager
if ! dpkg-query -W -f='${Status}' prometheus-alertmanager 2>/dev/null | grep -q 'install ok installed'; then
  mkdir -p "$templates"
  install -m 0644 "$work/x-prometheus-alertmanager$templates/"*.tmpl "$templates/"
fi
echo "$want" > "$stamp"
