"""Central logs on the lab (roles/central_logs; REQ-MON-5, REQ-LOG-1 to REQ-LOG-4): a
marker written on every host is found on mgmt-01 in /var/log/journal/remote, with its
delay (write to mgmt-01) reported per host for the benchmark's forwarding p95; a host
cut off from the collector loses nothing and keeps the order once the link is back; a
client without a site certificate is refused; the stored files are not readable by a
user outside the operators' group. Bounded polling, no fixed sleeps."""

from __future__ import annotations

import json
import time
import uuid

from tests.support.central_logs import REMOTE, find_markers
from tests.support.labhosts import lab_spec

SPEC = lab_spec()
HOSTS = {h.name: h for h in SPEC.hosts}
MGMT = "mgmt-01"
PORT = 19532
TAG = "securecore-marker"
# The host whose link is cut: the plugin zone, whose only ways out are rules.
CUT = "plugin-01"
CUT_TABLE = "securecore_test_logcut"


def find(mgmt, markers: list[str], timeout: float) -> dict[str, dict]:
    """Per marker found on mgmt-01 (tests/support/central_logs.py): written, seen, host."""
    return find_markers(mgmt, TAG, markers, timeout)["found"]


def mark(host, marker: str) -> None:
    host.check_output(f"logger -t {TAG} {marker}")


def test_a_marker_of_every_host_reaches_mgmt_01_and_its_delay_is_reported(hosts) -> None:
    markers = {name: f"marker-{name}-{uuid.uuid4()}" for name in hosts}
    for name, marker in markers.items():
        mark(hosts[name], marker)
    found = find(hosts[MGMT], list(markers.values()), timeout=20)
    missing = [name for name, marker in markers.items() if marker not in found]
    assert not missing, f"markers of {missing} not on {MGMT} after 20 s"
    delays = {}
    for name, marker in markers.items():
        entry = found[marker]
        assert entry["host"] == name, entry  # the entry keeps its host
        delays[name] = round(entry["seen"] - entry["written"], 3)
    # The per-host delays, for bench's forwarding p95 (seconds from write to mgmt-01).
    print("central-logs forwarding delay (s):", json.dumps(delays, sort_keys=True))


def test_a_host_cut_off_loses_nothing_and_keeps_the_order(hosts) -> None:
    cut, mgmt = hosts[CUT], hosts[MGMT]
    collector = HOSTS[MGMT].address
    rule = (
        f"nft add table inet {CUT_TABLE} && "
        f"nft add chain inet {CUT_TABLE} out '{{ type filter hook output priority -10; }}' && "
        f"nft add rule inet {CUT_TABLE} out ip daddr {collector} tcp dport {PORT} "
        "reject with tcp reset"
    )
    markers = [f"cut-{CUT}-{i}-{uuid.uuid4()}" for i in range(5)]
    try:
        cut.check_output(rule)
        for marker in markers:
            mark(cut, marker)
        # Not there while the link is cut (a short look: nothing can arrive).
        assert find(mgmt, markers, timeout=3) == {}
    finally:
        cut.run(f"nft delete table inet {CUT_TABLE}")
    found = find(mgmt, markers, timeout=30)
    assert set(found) == set(markers), f"lost after the cut: {set(markers) - set(found)}"
    written = [found[m]["written"] for m in markers]
    assert written == sorted(written)
    # In the collector's order too.
    order = mgmt.check_output(
        f"journalctl --directory={REMOTE} -o cat SYSLOG_IDENTIFIER={TAG} _HOSTNAME={CUT}"
    ).split()
    assert [m for m in order if m in markers] == markers


def test_a_client_without_a_site_certificate_is_refused(hosts) -> None:
    source = hosts["core-01"]
    collector = HOSTS[MGMT].address
    directory = "/run/securecore-test-selfsigned"
    try:
        source.check_output(
            f"install -d -m 0700 {directory} && openssl req -x509 -newkey ec "
            f"-pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {directory}/k.pem "
            f"-out {directory}/c.pem -subj /CN=core-01 -days 1 2>/dev/null"
        )
        marker = f"forged-{uuid.uuid4()}"
        entry = f"__REALTIME_TIMESTAMP={int(time.time() * 1e6)}\\nMESSAGE={marker}\\n\\n"
        for identity in ("", f"--cert {directory}/c.pem --key {directory}/k.pem"):
            answer = source.run(
                f"printf '{entry}' | curl -sS -m 10 --cacert /etc/securecore/tls/ca.pem "
                f"{identity} -H 'Content-Type: application/vnd.fdo.journal' "
                f"--data-binary @- https://{collector}:{PORT}/upload "
                "-o /dev/null -w '%{http_code}'"
            )
            # The handshake fails (curl: no HTTP status) and nothing is stored.
            assert answer.rc != 0 and answer.stdout.strip() in ("", "000"), answer
        assert find(hosts[MGMT], [marker], timeout=1) == {}
    finally:
        source.run(f"rm -rf {directory}")


def test_the_central_logs_are_read_by_root_and_the_operators_group_only(hosts) -> None:
    mgmt = hosts[MGMT]
    listing = mgmt.check_output(f"stat -c '%a %G' {REMOTE}")
    assert listing == "750 securecore-logreaders"
    files = mgmt.check_output(f"find {REMOTE} -type f -perm /o=rwx").strip()
    assert files == "", files
    # An unprivileged user outside the group reads nothing.
    answer = mgmt.run(f"runuser -u nobody -- journalctl --directory={REMOTE} -n 1 -q")
    assert answer.rc != 0 or answer.stdout.strip() == "", answer
