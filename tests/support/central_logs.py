"""Markers in the central logs (roles/central_logs): how long mgmt-01 takes to see them.

Shared by the lab checks (molecule/default/tests/central_logs) and bench/operations.py.
"""

from __future__ import annotations

import json
import shlex

# Where mgmt-01's journal-remote stores what the hosts send.
REMOTE = "/var/log/journal/remote"

# Polls journalctl on mgmt-01 every 0.1 s until every marker given (entries with
# SYSLOG_IDENTIFIER argv[1]) is there, or the deadline, and prints, per marker, its
# source timestamp (__REALTIME_TIMESTAMP, the writing host's clock; the lab's
# containers share the machine's), the time mgmt-01 first saw it and its host; and
# the seconds each journalctl run took. Creates the file argv[3] (unless "-") after
# its first poll, for a caller that writes markers only once the polling runs.
FINDER = r"""
import json, subprocess, sys, time
tag, deadline, ready = sys.argv[1], time.time() + float(sys.argv[2]), sys.argv[3]
directory, markers = sys.argv[4], set(sys.argv[5:])
found, polls = {}, []
while True:
    started = time.time()
    out = subprocess.run(["journalctl", "--directory=" + directory, "-o", "json",
                          "SYSLOG_IDENTIFIER=" + tag],
                         capture_output=True, text=True).stdout
    now = time.time()
    polls.append(now - started)
    if len(polls) == 1 and ready != "-":
        open(ready, "w").close()
    for line in out.splitlines():
        entry = json.loads(line)
        message = entry.get("MESSAGE")
        if message in markers and message not in found:
            found[message] = {"written": int(entry["__REALTIME_TIMESTAMP"]) / 1e6,
                              "seen": now, "host": entry.get("_HOSTNAME")}
    if set(found) == markers or now > deadline:
        break
    time.sleep(0.1)
print(json.dumps({"found": found, "polls": polls}))
"""


def find_markers(mgmt, tag: str, markers: list[str], timeout: float, ready: str = "-") -> dict:
    """FINDER's answer on MGMT: {"found": {marker: {written, seen, host}}, "polls": [s]}."""
    command = f"python3 -c {shlex.quote(FINDER)} {tag} {timeout} {ready} {REMOTE} " + " ".join(
        markers
    )
    return json.loads(mgmt.check_output(command))
