"""Package lists, security updates and the site's package proxy after site.yml
(roles/hardening's updates, roles/package_proxy; REQ-HARD-12, REQ-HARD-16).

plugin-01's zone has no egress: its lists and updates come through the proxy on
mgmt-01, which must be no way out for anything else."""

from __future__ import annotations

import shlex

import pytest

from tests.support.labhosts import can_connect, lab_spec

SPEC = lab_spec()
HOSTS = {h.name: h for h in SPEC.hosts}
PROXY_HOST, PROXY_PORT = "mgmt-01", 3142
PROXY = f"http://{HOSTS[PROXY_HOST].address}:{PROXY_PORT}"


def proxied(host, request: str) -> str:
    """The status line the proxy answers REQUEST (a raw HTTP request line) with, sent from
    HOST: what apt, or anything else on the host, would get."""
    client = (
        "import socket;"
        f"c=socket.create_connection(('{HOSTS[PROXY_HOST].address}',{PROXY_PORT}),timeout=20);"
        f"c.sendall({request!r}.encode()+b'\\r\\nConnection: close\\r\\n\\r\\n');"
        "print(c.recv(200).split(b'\\r\\n')[0].decode())"
    )
    return host.check_output(f"python3 -c {shlex.quote(client)}")


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_lists_are_current_and_no_security_update_waits(hosts, name) -> None:
    host = hosts[name]
    fresh = host.check_output(
        "find /var/lib/apt/lists -maxdepth 1 -name '*_InRelease' -mmin -1440 | wc -l"
    )
    assert int(fresh) >= 3, "the archive's, the updates' and the security archive's lists"
    simulated = host.check_output("apt-get --simulate -o Debug::NoLocking=1 dist-upgrade")
    waiting = [
        line for line in simulated.splitlines() if line.startswith("Inst") and "-security" in line
    ]
    assert waiting == []


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_needrestart_reports_and_restarts_nothing_itself(hosts, name) -> None:
    host = hosts[name]
    assert (
        "$nrconf{restart} = 'l';"
        in host.file("/etc/needrestart/conf.d/securecore.conf").content_string
    )
    report = host.check_output("needrestart -b")
    assert "NEEDRESTART-VER:" in report


def test_the_plugin_zone_gets_its_lists_through_the_proxy_only(hosts) -> None:
    plugin = hosts["plugin-01"]
    assert (
        f'Acquire::http::Proxy "{PROXY}";'
        in plugin.file("/etc/apt/apt.conf.d/30securecore-proxy").content_string
    )
    # Through the proxy: Debian's archive answers.
    release = "http://deb.debian.org/debian/dists/bookworm/InRelease"
    answer = proxied(plugin, f"GET {release} HTTP/1.1\r\nHost: deb.debian.org")
    assert answer.split()[1] == "200", answer
    # Around it: the zone's firewall drops the packet (no egress but the core API and the
    # proxy). The archive's address is looked up where names resolve; mgmt-01 reaches it.
    archive = hosts[PROXY_HOST].check_output("getent ahostsv4 deb.debian.org").split()[0]
    assert can_connect(hosts[PROXY_HOST], archive, 80, banner=False)
    assert not can_connect(plugin, archive, 80, banner=False)
    # Hosts of other zones do not use it, and cannot reach it.
    assert not can_connect(
        hosts["dmz-01"], str(HOSTS[PROXY_HOST].address), PROXY_PORT, banner=False
    )


@pytest.mark.parametrize(
    "request_line",
    [
        "GET http://example.org/ HTTP/1.1\r\nHost: example.org",  # another site
        "CONNECT deb.debian.org:443 HTTP/1.1\r\nHost: deb.debian.org:443",  # a tunnel
        "GET http://pypi.org/simple/ HTTP/1.1\r\nHost: pypi.org",  # another package registry
        # Repositories Debian's own acng.conf remaps: another distribution, and a file
        # host anyone can upload to.
        "GET http://archive.ubuntu.com/ubuntu/dists/jammy/InRelease HTTP/1.1\r\n"
        "Host: archive.ubuntu.com",
        "GET http://downloads.sourceforge.net/project/x/x HTTP/1.1\r\n"
        "Host: downloads.sourceforge.net",
    ],
)
def test_the_proxy_is_no_way_out_of_the_zone(hosts, request_line) -> None:
    """The proxy serves Debian's archives only (ForceManaged, no CONNECT): a host without
    egress that asks it for anything else is refused."""
    status = proxied(hosts["plugin-01"], request_line)
    assert status.split()[1] in ("403", "405"), status


def test_the_proxy_maintenance_needs_its_login(hosts) -> None:
    """The report page's maintenance actions (expire, delete, truncate the cache) are not
    for the zone that uses the proxy: without AdminAuth's login, 401."""
    host = f"{HOSTS[PROXY_HOST].address}:{PROXY_PORT}"
    expire = "/acng-report.html?doExpire=Start+Scan+and%2For+Expiration&abortOnErrors=aOe"
    status = proxied(hosts["plugin-01"], f"GET {expire} HTTP/1.1\r\nHost: {host}")
    assert status.split()[1] == "401", status
