"""Central logs on the lab (roles/central_logs; REQ-MON-5, REQ-LOG-1 to REQ-LOG-5): a
marker written on every host is found on mgmt-01 in /var/log/journal/remote, with its
delay (write to mgmt-01) reported per host for the benchmark's forwarding p95; a host
cut off from the collector loses nothing and keeps the order once the link is back; a
client without a site certificate is refused; a host's entries land in its own files
only, whatever they claim, and no local user of the collector reaches the receivers; the
stored files are not readable by a user outside the operators' group. Bounded polling,
no fixed sleeps."""

from __future__ import annotations

import json
import time
import uuid

from tests.support.central_logs import REMOTE, find_markers
from tests.support.labhosts import lab_spec

SPEC = lab_spec()
HOSTS = {h.name: h for h in SPEC.hosts}
MGMT = "mgmt-01"
# Each host's own port on the collector: the first, plus its place among the sorted
# hosts (central_logs_sender_port).
FIRST_PORT = 19532
PORT = {name: FIRST_PORT + index for index, name in enumerate(sorted(HOSTS))}
TAG = "securecore-marker"
# The host whose link is cut: the plugin zone, whose only ways out are rules.
CUT = "plugin-01"
CUT_TABLE = "securecore_test_logcut"


def find(mgmt, markers: list[str], timeout: float) -> dict[str, dict]:
    """Per marker found on mgmt-01 (tests/support/central_logs.py): written, seen, host."""
    return find_markers(mgmt, TAG, markers, timeout)["found"]


def mark(host, marker: str) -> None:
    host.check_output(f"logger -t {TAG} {marker}")


def in_files_of(mgmt, sender: str) -> list[str]:
    """The markers in SENDER's own files on the collector (SENDER.journal and its
    archives), which hold what SENDER's certificate sent."""
    return mgmt.check_output(
        f"journalctl --file='{REMOTE}/{sender}[.@]*' -o cat SYSLOG_IDENTIFIER={TAG}"
    ).split()


def upload(source, port: int, entry: str, identity: str) -> tuple[int, str]:
    """POST one journal entry (export format) to the collector's PORT from SOURCE as
    IDENTITY (curl's --cert/--key, or none): curl's exit status and the HTTP status."""
    collector = HOSTS[MGMT].address
    answer = source.run(
        f"printf '{entry}' | curl -sS -m 10 --cacert /etc/securecore/tls/ca.pem "
        f"{identity} -H 'Content-Type: application/vnd.fdo.journal' "
        f"--data-binary @- https://{collector}:{port}/upload "
        "-o /dev/null -w '%{http_code}'"
    )
    return answer.rc, answer.stdout.strip()


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
        # In the sender's own files: the file names the certificate that sent it.
        assert marker in in_files_of(hosts[MGMT], name), name
    # The per-host delays, for bench's forwarding p95 (seconds from write to mgmt-01).
    print("central-logs forwarding delay (s):", json.dumps(delays, sort_keys=True))


def test_a_host_cut_off_loses_nothing_and_keeps_the_order(hosts) -> None:
    cut, mgmt = hosts[CUT], hosts[MGMT]
    collector = HOSTS[MGMT].address
    rule = (
        f"nft add table inet {CUT_TABLE} && "
        f"nft add chain inet {CUT_TABLE} out '{{ type filter hook output priority -10; }}' && "
        f"nft add rule inet {CUT_TABLE} out ip daddr {collector} tcp dport {PORT[CUT]} "
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
            rc, status = upload(source, PORT["core-01"], entry, identity)
            # The handshake fails (curl: no HTTP status) and nothing is stored.
            assert rc != 0 and status in ("", "000"), (rc, status)
        assert find(hosts[MGMT], [marker], timeout=1) == {}
    finally:
        source.run(f"rm -rf {directory}")


def test_a_host_writes_only_its_own_files_whatever_its_entries_claim(hosts) -> None:
    """A host taken over (root on plugin-01) sends entries in core-01's name: to its own
    port they are stored, in plugin-01's files, never core-01's; to core-01's port its
    certificate is refused (stunnel takes a certificate of core-01's name only there,
    tried from mgmt-01, whose own firewall lets it reach every port)."""
    own = "--cert /etc/securecore/tls/client.pem --key /etc/securecore/tls/client.key"
    now = int(time.time() * 1e6)
    forged = f"forged-hostname-{uuid.uuid4()}"
    entry = (
        f"__REALTIME_TIMESTAMP={now}\\n_HOSTNAME=core-01\\nSYSLOG_IDENTIFIER={TAG}\\n"
        f"MESSAGE={forged}\\n\\n"
    )
    rc, status = upload(hosts[CUT], PORT[CUT], entry, own)
    assert (rc, status) == (0, "202"), (rc, status)
    found = find(hosts[MGMT], [forged], timeout=10)
    assert found[forged]["host"] == "core-01"  # what it claims...
    assert forged in in_files_of(hosts[MGMT], CUT)  # ...in the files of who sent it
    assert forged not in in_files_of(hosts[MGMT], "core-01")

    other = f"other-port-{uuid.uuid4()}"
    entry = f"__REALTIME_TIMESTAMP={now}\\nSYSLOG_IDENTIFIER={TAG}\\nMESSAGE={other}\\n\\n"
    rc, status = upload(hosts[MGMT], PORT["core-01"], entry, own)
    assert rc != 0 and status in ("", "000"), (rc, status)
    rc, status = upload(hosts[MGMT], PORT[MGMT], entry, own)  # its own port takes it
    assert (rc, status) == (0, "202"), (rc, status)
    found = find(hosts[MGMT], [other], timeout=10)
    assert other in in_files_of(hosts[MGMT], MGMT)
    assert other not in in_files_of(hosts[MGMT], "core-01")


def test_no_local_user_of_the_collector_but_stunnel_reaches_a_receiver(hosts) -> None:
    # journal-remote's sockets take plain HTTP without any check: only stunnel's group
    # may connect, not a local user writing in a host's name.
    mgmt = hosts[MGMT]
    socket = "/run/securecore-journal-remote/core-01.sock"
    assert mgmt.check_output(f"stat -c '%a %U %G' {socket}") == "660 root stunnel4"
    marker = f"local-{uuid.uuid4()}"
    answer = mgmt.run(
        f"printf 'MESSAGE={marker}\\nSYSLOG_IDENTIFIER={TAG}\\n\\n' | runuser -u nobody -- "
        f"curl -sS -m 5 --unix-socket {socket} -H 'Content-Type: application/vnd.fdo.journal' "
        "--data-binary @- http://localhost/upload -o /dev/null -w '%{http_code}'"
    )
    assert answer.rc != 0 and answer.stdout.strip() in ("", "000"), answer
    assert find(mgmt, [marker], timeout=1) == {}


def test_the_central_logs_are_read_by_root_and_the_operators_group_only(hosts) -> None:
    mgmt = hosts[MGMT]
    listing = mgmt.check_output(f"stat -c '%a %G' {REMOTE}")
    assert listing == "750 securecore-logreaders"
    files = mgmt.check_output(f"find {REMOTE} -type f -perm /o=rwx").strip()
    assert files == "", files
    # An unprivileged user outside the group reads nothing.
    answer = mgmt.run(f"runuser -u nobody -- journalctl --directory={REMOTE} -n 1 -q")
    assert answer.rc != 0 or answer.stdout.strip() == "", answer
