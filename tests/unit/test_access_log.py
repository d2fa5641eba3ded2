"""The access log's own thread (securecore/server/logs.py): every line reaches the log,
masked, also when the process ends right after the request, as a worker process does."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time

from securecore.server.logs import ATOMIC_WRITE_BYTES, QueuedStreamHandler
from tests.support.commands import ROOT

LINES = 20_000  # more than the queue holds, and more than the thread writes meanwhile

# A process that configures logging as the service does, logs an access line per
# "request" (the last ones just before it ends) and ends the way it is told.
CHILD = textwrap.dedent(
    """
    import logging, logging.config, multiprocessing, os, signal, sys
    from securecore.server.logs import AccessLogger, flush_access_log, log_config

    def log_lines(numbers):
        # Both ways a line is queued, in turn: a logging call (a LogRecord) and
        # the service's HTTP protocol's AccessLogger (its time and arguments).
        logger = logging.getLogger("uvicorn.access")
        fast = AccessLogger.for_uvicorn(logger)
        assert isinstance(fast, AccessLogger)
        for number in numbers:
            (fast if number % 2 else logger).info(
                '%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET",
                f"/v1/x?n={number}&token=eyJa.eyJb.c", "1.1", 200)

    def worker(lines):
        logging.config.dictConfig(log_config())
        log_lines(range(lines))

    if __name__ == "__main__":
        lines, how = int(sys.argv[1]), sys.argv[2]
        if how == "worker":
            process = multiprocessing.get_context("spawn").Process(target=worker, args=(lines,))
            process.start()
            process.join()
            sys.exit(process.exitcode)
        if how == "fork":
            # Lines queued in the parent when it forks are the parent's to write.
            logging.config.dictConfig(log_config())
            log_lines(range(lines // 2))
            child = os.fork()
            if child == 0:
                log_lines(range(lines // 2, lines))
                flush_access_log()
                os._exit(0)
            os.waitpid(child, 0)
            sys.exit(0)
        worker(lines)
        if how == "sigterm":
            # As uvicorn ends a service stopped by SIGTERM: the signal raised again
            # once it has shut down, its default action ending the process at once.
            flush_access_log()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
    """
)


def run(how: str, tmp_path) -> list[dict]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run(
        [sys.executable, str(script), str(LINES), how],
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this tree's securecore
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == (-15 if how == "sigterm" else 0), proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stderr.splitlines()]


def test_every_access_line_is_written_when_the_main_process_ends(tmp_path) -> None:
    lines = run("main", tmp_path)
    assert [line["message"].split("n=")[1].split("&")[0] for line in lines] == [
        str(n) for n in range(LINES)
    ]


def test_every_access_line_is_written_when_a_worker_process_ends(tmp_path) -> None:
    # multiprocessing ends a worker with os._exit, past atexit: without the handler's
    # finalizer the lines still queued would be lost with it.
    lines = run("worker", tmp_path)
    assert len(lines) == LINES
    assert lines[-1]["message"].endswith(f'n={LINES - 1}&token=*** HTTP/1.1" 200')
    assert all(line["logger"] == "uvicorn.access" for line in lines)
    assert not any("eyJ" in line["message"] for line in lines)  # masked by the thread too


def test_every_access_line_is_written_when_the_service_stops_on_sigterm(tmp_path) -> None:
    # Past atexit: without the flush when the service stops, the queued lines are lost.
    assert len(run("sigterm", tmp_path)) == LINES


def number(line: dict) -> int:
    return int(line["message"].split("n=")[1].split("&")[0])


def test_a_forked_process_writes_its_own_lines_and_not_its_parents(tmp_path) -> None:
    # The child is forked with the parent's handler and queue: without a thread and
    # a queue of its own it would write nothing, or the parent's lines a second time.
    lines = run("fork", tmp_path)
    assert sorted(number(line) for line in lines) == list(range(LINES))  # each once
    parent = {line["pid"] for line in lines if number(line) < LINES // 2}
    child = {line["pid"] for line in lines if number(line) >= LINES // 2}
    assert len(parent) == len(child) == 1
    assert parent != child


class BrokenStream(io.StringIO):
    """stderr whose reader is gone."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_stream_that_fails_loses_its_lines_but_never_holds_the_service() -> None:
    handler = QueuedStreamHandler()
    handler.target.setStream(BrokenStream())
    handler.put_line(time.time(), "%s", ("lost",))
    started = time.monotonic()
    handler.flush()  # answered: the failed write does not end the thread
    assert time.monotonic() - started < 5
    assert handler.writer.is_alive()
    working = io.StringIO()
    handler.target.setStream(working)
    handler.put_line(time.time(), "%s", ("written",))
    handler.flush()
    assert [json.loads(line)["message"] for line in working.getvalue().splitlines()] == ["written"]
    handler.close()
    handler.put_line(time.time(), "%s", ("after close",))  # written at once, not queued
    assert json.loads(working.getvalue().splitlines()[-1])["message"] == "after close"


class RecordingStream(io.StringIO):
    """A stream that remembers each write it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_lines_go_out_in_writes_no_other_process_can_cut() -> None:
    # Workers share stderr: a write of at most PIPE_BUF bytes to a pipe is never mixed
    # with another process's, so each write holds whole lines and no more than that.
    # Without the chunks, the 300 lines below went out in one write of about 40 kB.
    handler = QueuedStreamHandler()
    stream = RecordingStream()
    handler.target.setStream(stream)
    for n in range(300):
        handler.put_line(time.time(), "%s - %s", ("127.0.0.1:1", f"GET /v1/x?n={n}" + "y" * 80))
    handler.flush()
    handler.close()
    assert len(stream.writes) > 1
    assert all(len(w.encode()) <= ATOMIC_WRITE_BYTES and w.endswith("\n") for w in stream.writes)
    lines = [json.loads(line) for w in stream.writes for line in w.splitlines()]
    assert [int(line["message"].split("n=")[1].split("y")[0]) for line in lines] == list(range(300))


def test_a_line_too_long_for_one_write_is_cut_and_says_so() -> None:
    # A client's request line is as long as the client makes it (the edge lets
    # 16 kB through): its access line is cut to fit one write, whatever it holds.
    handler = QueuedStreamHandler()
    stream = RecordingStream()
    handler.target.setStream(stream)
    target = "/v1/" + 'é"x' * 3000
    handler.put_line(time.time(), "%s - %s", ("127.0.0.1:1", f"GET {target} HTTP/1.1"))
    handler.put_line(time.time(), "%s - %s", ("127.0.0.1:1", "GET /v1/short HTTP/1.1"))
    handler.flush()
    handler.close()
    assert all(len(w.encode()) <= ATOMIC_WRITE_BYTES for w in stream.writes)
    cut, short = [json.loads(line) for w in stream.writes for line in w.splitlines()]
    assert cut["message"].startswith("127.0.0.1:1 - GET /v1/é") and cut["message"].endswith("...")
    assert cut["message_length"] == len(f"127.0.0.1:1 - GET {target} HTTP/1.1")
    assert short["message"] == "127.0.0.1:1 - GET /v1/short HTTP/1.1"
    assert "message_length" not in short
