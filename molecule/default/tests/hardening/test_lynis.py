"""An independent scanner's view of the converged hosts (REQ-HARD-17): Lynis's hardening
index on every lab host is at least 85.

Lynis is Debian's package, fetched on each host from its own apt sources (plugin-01
through the package proxy, as its updates come) and unpacked in a temporary directory
under /tmp (outside AIDE's database), never installed: the dpkg database stays as site.yml
left it. It runs as Lynis runs by default (Debian's profile and plugins, no test skipped),
from its unpacked tree (--usecwd). All six hosts are scanned at once, beside the read-only
checks (BACKGROUND, tests/support/background.py). Each host's figures land in
output/hardening/lynis.json: the index, the suggestions and warnings by test id, and the
packages Lynis found security updates for.
"""

from __future__ import annotations

import concurrent.futures
import json
import shlex
from typing import Any

from tests.support import background
from tests.support.commands import ROOT
from tests.support.labhosts import connect, lab_spec

SPEC = lab_spec()
TARGET = 85
FIGURES = ROOT / "output" / "hardening" / "lynis.json"
SCAN_SECONDS = 900
INSTALLED = "dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n' | awk '$1 == \"ii\" {print $2}'"
# The package's files laid out as Lynis's own release tree: the program, include/, db/,
# plugins/ and the profile, side by side.
UNPACK = (
    "apt-get -qq -o APT::Sandbox::User=root -o Acquire::Retries=3 download lynis"
    " && dpkg-deb -x lynis_*.deb deb && mkdir tree"
    " && cp -a deb/usr/sbin/lynis deb/usr/share/lynis/include deb/usr/share/lynis/db tree/"
    " && cp -a deb/etc/lynis/plugins deb/etc/lynis/default.prf tree/"
)


def _report(text: str) -> dict[str, Any]:
    """hardening_index, suggestion[] and warning[] and vulnerable_package[] of a
    Lynis report (key=value lines; a [] key repeats; fields of a finding split by |)."""
    found: dict[str, Any] = {"suggestions": [], "warnings": [], "vulnerable_packages": []}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "hardening_index":
            found["hardening_index"] = int(value)
        elif key == "lynis_version":
            found["lynis_version"] = value
        elif key in ("suggestion[]", "warning[]"):
            test_id, _, rest = value.partition("|")
            found["suggestions" if key == "suggestion[]" else "warnings"].append(
                f"{test_id}: {rest.split('|')[0]}"
            )
        elif key == "vulnerable_package[]":
            found["vulnerable_packages"].append(value)
    return found


def _scan(lab_host: Any) -> dict[str, Any]:
    host = connect(SPEC, lab_host)
    before = host.check_output(INSTALLED)
    workdir = host.check_output("mktemp -d /tmp/lynis-scan.XXXXXX")
    quoted = shlex.quote(workdir)
    try:
        # From the package lists site.yml keeps under a day old (roles/hardening).
        host.check_output(f"cd {quoted} && {UNPACK}")
        scan = host.run(
            f"cd {quoted}/tree && timeout {SCAN_SECONDS} sh ./lynis audit system --usecwd"
            f" --quick --no-colors --no-log --report-file {quoted}/report.dat"
        )
        assert scan.rc == 0, f"{lab_host.name}: lynis failed ({scan.rc}): {scan.stderr[-2000:]}"
        found = _report(host.check_output(f"cat {quoted}/report.dat"))
    finally:
        host.run(f"rm -rf {quoted}")
    assert host.check_output(INSTALLED) == before, f"{lab_host.name}: the packages changed"
    return found


def _scan_every_host() -> dict[str, dict[str, Any]]:
    with concurrent.futures.ThreadPoolExecutor(len(SPEC.hosts)) as pool:
        futures = {h.name: pool.submit(_scan, h) for h in SPEC.hosts}
        _done, pending = concurrent.futures.wait(futures.values(), timeout=SCAN_SECONDS + 300)
        assert not pending, "a Lynis scan did not finish in time"
    return {name: future.result() for name, future in sorted(futures.items())}


BACKGROUND = _scan_every_host


def test_every_host_reaches_the_lynis_target() -> None:
    """REQ-HARD-17: a Lynis hardening index of at least 85 on every lab host."""
    figures = background.result(__name__, _scan_every_host, timeout=SCAN_SECONDS + 600)
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps({"target": TARGET, "hosts": figures}, indent=2) + "\n")
    below = {
        name: (found.get("hardening_index"), found["suggestions"], found["warnings"])
        for name, found in figures.items()
        if found.get("hardening_index", 0) < TARGET
    }
    assert not below, f"hosts under a Lynis index of {TARGET} (see {FIGURES}): {below}"
    # Nothing was left behind by the scan.
    for lab_host in SPEC.hosts:
        leftover = connect(SPEC, lab_host).run("ls -d /tmp/lynis-scan.* 2>/dev/null")
        assert not leftover.stdout.strip(), (lab_host.name, leftover.stdout)
