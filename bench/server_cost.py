"""What a server under a benchmark spends: CPU time of its process tree, and where it goes.

`cpu_seconds(pid)` adds up the user and system time of a process and all its
descendants (a supervisor and its workers) from /proc, so that a benchmark can
report CPU-microseconds per request: steadier than requests/s on a shared
machine, since time the server waits for a CPU is not counted.

`Profile` samples the same processes with py-spy, each sample the stack of the
thread that holds the GIL: the Python work of a process, which is what bounds a
worker's throughput (the time a thread waits on a disk or a lock, or spends in C
code that released the GIL, is not sampled). `summarize` turns the stacks into
the summary a person reads: where the samples were, by the part of the code
(securecore's packages, the TLS and HTTP stack, SQLite, logging, metrics ...)
and by function. A frame's share counts the samples whose stack holds it
(inclusive); a function's own share, the samples it was the innermost Python
frame of (time in C code it called while holding the GIL included).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                children = (task / "children").read_text().split()
            except FileNotFoundError:
                continue
            pending.extend(int(child) for child in children)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of PID and every process below it (those still running)."""
    total = 0
    for process in _descendants(pid):
        try:
            stat = Path(f"/proc/{process}/stat").read_text()
        except FileNotFoundError:
            continue
        # Fields after the command name (which may hold spaces): utime is the 14th
        # field of the line, stime the 15th.
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


class Profile:
    """py-spy sampling PID and its subprocesses for SECONDS, into raw stacks."""

    def __init__(self, pid: int, seconds: float, output: Path, rate: int = 200) -> None:
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            raise SystemExit("--profile needs py-spy (pip install py-spy; the dev extra has it)")
        self.output = output
        self.process = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--subprocesses",
                "--gil",
                "--duration",
                str(max(1, round(seconds))),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stacks(self) -> list[tuple[list[str], int]]:
        _, errors = self.process.communicate(timeout=300)
        if self.process.returncode != 0:
            raise SystemExit(f"py-spy failed: {errors.strip()[-2000:]}")
        return read_raw(self.output.read_text())


# A frame as py-spy writes it: "name (path/to/file.py:line)", the path relative to
# sys.path's entry (securecore/audit/log.py, asyncio/tasks.py).
FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(:\d+)?\)$")
# Innermost frames of a thread that waits (for work, a lock, a socket) while holding
# the GIL as py-spy saw it (a sample taken as it was letting go): counted apart.
WAITING = {
    "Condition.wait (threading.py)",
    "Event.wait (threading.py)",
    "Queue.get (queue.py)",
    "SimpleQueue.get (queue.py)",
    "select (selectors.py)",
    "_worker (concurrent/futures/thread.py)",
}
# The part of the code a frame belongs to, by its file's path: the first that matches.
AREAS = [
    ("securecore: audit log", "/securecore/audit/"),
    ("securecore: sessions", "/securecore/sessions/"),
    ("securecore: policy", "/securecore/policy/"),
    ("securecore: state database", "/securecore/storage/"),
    ("securecore: keys and tokens", "/securecore/keys/"),
    ("securecore: crypto", "/securecore/crypto/"),
    ("securecore: metrics", "/securecore/monitoring/"),
    ("securecore: plugin registry", "/securecore/plugin_registry/"),
    ("securecore: server (middleware, routes)", "/securecore/server/"),
    ("securecore: other", "/securecore/"),
    ("prometheus_client", "/prometheus_client/"),
    ("starlette", "/starlette/"),
    ("uvicorn (HTTP protocol)", "/uvicorn/"),
    ("asyncio TLS (sslproto, ssl)", "/asyncio/sslproto.py"),
    ("asyncio TLS (sslproto, ssl)", "/ssl.py"),
    ("asyncio and anyio", "/asyncio/"),
    ("asyncio and anyio", "/anyio/"),
    ("logging", "/logging/"),
    ("json", "/json/"),
    ("sqlite3", "/sqlite3/"),
    ("psycopg", "/psycopg"),
    ("cryptography", "/cryptography/"),
    ("threading, queue", "/threading.py"),
    ("threading, queue", "/queue.py"),
]


def area(frame: str) -> str:
    found = FRAME.match(frame)
    path = "/" + found.group("file") if found else ""
    for name, marker in AREAS:
        if marker in path:
            return name
    return "other Python"


def function(frame: str) -> str:
    """The frame without its line number: "name (path)"."""
    found = FRAME.match(frame)
    return f"{found.group('name')} ({found.group('file')})" if found else frame


def read_raw(text: str) -> list[tuple[list[str], int]]:
    """(frames outermost first, samples) per line of py-spy's raw output; the process
    frame it puts first with --subprocesses is dropped."""
    stacks = []
    for line in text.splitlines():
        head, _, count = line.rpartition(" ")
        if not head or not count.isdigit():
            continue  # the continuation of a command line with newlines in it
        frames = [function(frame) for frame in head.split(";") if FRAME.match(frame)]
        stacks.append((frames, int(count)))
    return stacks


def summarize(
    stacks: list[tuple[list[str], int]], title: str, top: int = 30, cost_us: float | None = None
) -> str:
    """The summary; with COST_US (the server's CPU-us per request, measured without the
    profiler), each part's own share of it as well: an estimate, since a sample is
    wall time holding the GIL, not CPU time."""
    waiting = sum(count for frames, count in stacks if frames and frames[-1] in WAITING)
    stacks = [(frames, count) for frames, count in stacks if frames and frames[-1] not in WAITING]
    total = sum(count for _, count in stacks) or 1
    own_area: collections.Counter[str] = collections.Counter()
    inclusive_area: collections.Counter[str] = collections.Counter()
    own_function: collections.Counter[str] = collections.Counter()
    inclusive_function: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        if not frames:
            continue
        own_function[frames[-1]] += count
        own_area[area(frames[-1])] += count
        for name in {area(frame) for frame in frames}:
            inclusive_area[name] += count
        for frame in set(frames):
            inclusive_function[frame] += count

    def share(count: int) -> str:
        return f"{100 * count / total:5.1f} %"

    lines = [
        title,
        f"{total} samples of the thread holding the GIL in each process (py-spy --gil; "
        f"{waiting} more in a wait left out)",
        "",
    ]
    lines += [
        "By part of the code: own (innermost Python frame) / inclusive (on the stack)"
        + (f" / own share of the {cost_us:g} CPU-us a request costs" if cost_us else "")
    ]
    for name, count in own_area.most_common():
        per_request = f"  {cost_us * count / total:6.1f} us" if cost_us else ""
        lines.append(f"  {share(count)}  {share(inclusive_area[name])}{per_request}  {name}")
    lines += ["", f"Functions by own samples (top {top})"]
    for frame, count in own_function.most_common(top):
        lines.append(f"  {share(count)}  {frame}")
    lines += ["", f"securecore functions by inclusive samples (top {top})"]
    ours = [(f, c) for f, c in inclusive_function.most_common() if "(securecore/" in f]
    for frame, count in ours[:top]:
        lines.append(f"  {share(count)}  {frame}")
    return "\n".join(lines) + "\n"
