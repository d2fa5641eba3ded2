"""Pages in a real headless Chromium (Debian's chromium package, which
scripts/bootstrap.sh installs): the DOM it builds, a screenshot, and what it laid out.

The reports run no script and may load nothing. To ask Chromium how it laid a report
out, a page of the test's own holds the report in a frame and measures it there
(`laid_out`): nothing is added to the report."""

from __future__ import annotations

import html
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "chromium (installed by scripts/bootstrap.sh)"


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # --no-sandbox: the tests run as root; the network flags keep Chromium from
    # calling home on a machine with a closed network.
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            f"--user-data-dir={tmp_path / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def png_rows(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered-enough scanlines of an 8-bit RGB(A) PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, width, height = 8, b"", 0, 0
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    raw = zlib.decompress(idat)
    stride = len(raw) // height
    return width, height, [raw[i * stride : (i + 1) * stride] for i in range(height)]


def screenshot(
    tmp_path: Path, page: Path, shot: Path, fragment: str = "", size: tuple[int, int] = (1400, 1000)
) -> subprocess.CompletedProcess[str]:
    """SHOT: what a window of SIZE shows of PAGE scrolled to FRAGMENT. Chromium's headless
    screenshot of a page opened at a fragment comes out blank: a page of the test's own
    frames it there, the frame the window's size."""
    width, height = size
    frame = tmp_path / "frame.html"
    frame.write_text(
        '<!DOCTYPE html><html><body style="margin:0"><iframe src="'
        + page.as_uri()
        + (f"#{fragment}" if fragment else "")
        + f'" style="width:{width}px;height:{height}px;border:0"></iframe></body></html>'
    )
    return chromium(
        tmp_path,
        "--allow-file-access-from-files",
        f"--screenshot={shot}",
        f"--window-size={width},{height}",
        frame.as_uri(),
    )


# Runs in the test's page once the frame has loaded: what Chromium laid out, as JSON.
MEASURE = """
window.addEventListener("load", () => {
  const page = document.getElementById("report").contentDocument;
  const box = (e) => { const b = e.getBoundingClientRect(); return [b.width, b.height]; };
  const found = {
    title: page.title,
    text: page.body.innerText,
    svgs: [...page.querySelectorAll("svg")].map((s) => ({
      size: box(s),
      title: s.querySelector("title") ? s.querySelector("title").textContent : "",
      shapes: s.querySelectorAll("rect, path").length,
    })),
    cells: [...page.querySelectorAll("svg rect")].slice(0, 4000).map((r) => ({
      size: box(r),
      fill: getComputedStyle(r).fill,
      title: r.querySelector("title") ? r.querySelector("title").textContent : "",
    })),
  };
  document.getElementById("measured").textContent = JSON.stringify(found);
});
"""


def laid_out(tmp_path: Path, page: Path) -> dict[str, Any]:
    """What Chromium laid out of PAGE (in a frame of a page of the test's own, which
    measures it): its title, its visible text, each SVG's size, title and shapes, and
    each SVG shape's size, fill and title."""
    frame = tmp_path / "measure.html"
    frame.write_text(
        '<!DOCTYPE html><html><body><iframe id="report" src="'
        + page.as_uri()
        + '" style="width:1400px;height:900px"></iframe><pre id="measured"></pre>'
        + f"<script>{MEASURE}</script></body></html>"
    )
    dumped = chromium(
        tmp_path,
        "--allow-file-access-from-files",
        "--virtual-time-budget=10000",
        "--dump-dom",
        frame.as_uri(),
    )
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    text = dumped.stdout.split('<pre id="measured">', 1)[1].split("</pre>", 1)[0]
    assert text, f"nothing measured: {dumped.stderr[-2000:]}"
    return json.loads(html.unescape(text))
