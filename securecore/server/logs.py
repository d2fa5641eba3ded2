"""Structured JSON logs with secrets masked.

One JSON object per line: time, level, logger, message and the record's extra
fields. Values under secret-looking keys and anything shaped like a bearer
token or JWT are replaced by "***" before they are written.

The access log (a line per request) is formatted and written by a thread of
its own (QueuedStreamHandler), so that no request waits on formatting or on
the log's pipe; every other record is written before the call returns, so
that an error logged just before a crash is not lost with the process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import select
import threading
import time
from typing import Any

SECRET_KEY = re.compile(r"(pass(word|phrase)?|pin|secret|token|authorization|api[_-]?key)", re.I)
SECRET_TEXT = re.compile(
    r"(eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*|(?i:bearer)\s+[A-Za-z0-9._~+/-]+=*)"
)
# uvicorn adds an ANSI-coloured copy of some messages; JSON logs keep the plain one.
STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


def mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "***" if SECRET_KEY.search(str(k)) else mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    if isinstance(value, str):
        return SECRET_TEXT.sub("***", value)
    return value


def json_line(created: float, level: str, name: str, pid: int | None, message: str) -> dict:
    """The fields every log line starts with."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created * 1000) % 1000:03d}Z",
        "level": level,
        "logger": name,
        "pid": pid,  # which worker, when there are several
        "message": message,
    }


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = json_line(
            record.created,
            record.levelname.lower(),
            record.name,
            record.process,
            record.getMessage(),
        )
        entry.update({k: v for k, v in record.__dict__.items() if k not in STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(mask(entry), default=str)


# Records waiting for the access log's thread at most. Past that the thread is
# behind (a log that cannot keep up): a request waits until it has caught up, so
# memory stays bounded and no line is lost or written out of order.
ACCESS_QUEUE_RECORDS = 10_000


# How often the access log's thread writes what was queued meanwhile: a record
# queued wakes nobody (a thread woken per request cost more CPU than the
# formatting it took over), and the lines of many requests go out in one write.
WRITE_SECONDS = 0.05
# How long flush() waits for the thread at most.
FLUSH_SECONDS = 10.0
# The workers of a service share its stderr (a pipe, or journald's socket): a write
# of at most PIPE_BUF bytes to a pipe is never mixed with another process's
# (POSIX), so lines go out in chunks of whole lines no larger. A longer batch in
# one write was cut into another worker's line now and then.
ATOMIC_WRITE_BYTES = select.PIPE_BUF


def within_one_write(line: str) -> str:
    """LINE (a JSON object) with its message cut short enough that the line and its
    newline fit one ATOMIC_WRITE_BYTES write, and the message's full length: a client
    sends the request line, and a longer one would be cut by other workers' lines."""
    entry = json.loads(line)
    message = str(entry.get("message", ""))
    entry["message_length"] = len(message)

    def cut_to(characters: int) -> str:
        return json.dumps({**entry, "message": message[:characters] + "..."})

    # The longest cut that fits (escapes make a character 1 to 6 bytes): rare, so a
    # bisection of a dozen encodings is cheap enough.
    low, high = 0, len(message)
    while low < high:
        middle = (low + high + 1) // 2
        if len(cut_to(middle)) < ATOMIC_WRITE_BYTES:
            low = middle
        else:
            high = middle - 1
    return cut_to(low)


# An access line queued without a LogRecord (AccessLogger.info): when, and the
# message's format and arguments.
Line = tuple[float, str, tuple[object, ...]]


class QueuedStreamHandler(logging.Handler):
    """JSON lines to stderr, formatted and written in batches by a thread of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.target = logging.StreamHandler()
        self.target.setFormatter(JSONFormatter())
        self.records: queue.SimpleQueue[logging.LogRecord | Line | threading.Event | None]
        self._start()
        # A process forked from this one has the handler but not its thread: it gets
        # its own thread, and a queue without the lines its parent writes.
        os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        self.records = queue.SimpleQueue()
        self.pid = os.getpid()  # the access line names its worker
        self.writer = threading.Thread(target=self._write, name="access-log", daemon=True)
        self.writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        self._put(record)

    def put_line(self, created: float, message: str, args: tuple[object, ...]) -> None:
        """An access line from AccessLogger: formatted by the thread, as a record is."""
        self._put((created, message, args))

    def _put(self, item: logging.LogRecord | Line) -> None:
        if not self.writer.is_alive():  # closed: written here, as logging would
            self._write_lines([self._format_item(item)])
            return
        # An access line's arguments are strings and numbers that nothing changes
        # after the call: the thread formats the line as it was.
        if self.records.qsize() >= ACCESS_QUEUE_RECORDS:
            self.flush()
        self.records.put(item)

    def _write(self) -> None:
        running = True
        while running:
            time.sleep(WRITE_SECONDS)
            lines, written = [], []
            with contextlib.suppress(queue.Empty):
                while True:
                    item = self.records.get_nowait()
                    if item is None:
                        running = False  # close(): what came before is written first
                    elif isinstance(item, threading.Event):
                        written.append(item)
                    else:
                        lines.append(self._format_item(item))
            try:
                if lines:
                    self._write_lines(lines)
            finally:
                for event in written:
                    event.set()  # flush(): everything queued before it is written

    def _write_lines(self, lines: list[str]) -> None:
        """Write LINES in chunks of whole lines, each at most ATOMIC_WRITE_BYTES; a
        stream that fails (its reader gone) loses them, reported as logging reports a
        failed write, and the next lines are tried again."""
        self.target.acquire()
        try:
            chunk: list[str] = []
            size = 0
            for line in lines:
                # The lines are JSON with ASCII escapes: a character is a byte.
                if chunk and size + len(line) + 1 > ATOMIC_WRITE_BYTES:
                    self.target.stream.write("\n".join(chunk) + "\n")
                    self.target.flush()
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line) + 1
            self.target.stream.write("\n".join(chunk) + "\n")
            self.target.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": f"{len(lines)} access lines"}))
        finally:
            self.target.release()

    def _format_item(self, item: logging.LogRecord | Line) -> str:
        line = self._format_line(*item) if isinstance(item, tuple) else self._format(item)
        return line if len(line) < ATOMIC_WRITE_BYTES else within_one_write(line)

    def _format(self, record: logging.LogRecord) -> str:
        try:
            return self.target.format(record)
        except Exception:  # as logging does: a record that cannot be formatted is reported
            self.handleError(record)
            return json.dumps({"level": "error", "message": "an access record failed to format"})

    def _format_line(self, created: float, message: str, args: tuple[object, ...]) -> str:
        try:
            entry = json_line(created, "info", ACCESS_LOGGER, self.pid, message % args)
            return json.dumps(mask(entry), default=str)
        except Exception:
            return json.dumps({"level": "error", "message": "an access line failed to format"})

    def flush(self) -> None:
        """Wait until every line queued so far is written (at most FLUSH_SECONDS: a
        stream that blocks must not hold the service)."""
        if self.writer.is_alive():
            written = threading.Event()
            self.records.put(written)
            written.wait(FLUSH_SECONDS)

    def close(self) -> None:
        # logging.shutdown() when the process ends (the service's workers are spawned
        # interpreters, which end through it too), or a new configuration: the lines
        # still queued are written first.
        if self.writer.is_alive():
            self.records.put(None)
            self.writer.join()
        super().close()


ACCESS_LOGGER = "uvicorn.access"


class AccessLogger:
    """Takes the place of the `uvicorn.access` logger in the service's HTTP protocol
    (tls_scope): uvicorn calls `info` once per request, and a logging call makes a
    LogRecord (the caller's frame looked up, the thread and process named): more of
    the request's time than the rest of its line. Here the call queues the time and
    the arguments for the access log's thread, which writes the same JSON line."""

    __slots__ = ("handler",)

    def __init__(self, handler: QueuedStreamHandler) -> None:
        self.handler = handler

    def info(self, message: str, *args: object) -> None:
        self.handler.put_line(time.time(), message, args)

    @staticmethod
    def for_uvicorn(default: logging.Logger) -> logging.Logger | AccessLogger:
        """The access logger a connection uses: this one when the access log is the
        queued handler alone, at INFO, without filters (log_config), else DEFAULT,
        uvicorn's own. Decided per connection: a change to the logging
        configuration reaches the connections made after it."""
        handlers = default.handlers
        if (
            default.isEnabledFor(logging.INFO)
            and not default.propagate
            and len(handlers) == 1
            and isinstance(handlers[0], QueuedStreamHandler)
            and handlers[0].level <= logging.INFO
            and not default.filters
            and not handlers[0].filters
        ):
            return AccessLogger(handlers[0])
        return default


def flush_access_log() -> None:
    """Write the access lines still queued. The service calls it when it stops:
    uvicorn ends a process stopped by SIGTERM by raising the signal again once it
    has shut down, which ends it past atexit and logging's own shutdown."""
    for handler in logging.getLogger(ACCESS_LOGGER).handlers:
        handler.flush()


def log_config(level: str = "INFO") -> dict:
    """A logging.config dictionary for uvicorn and the service: JSON to stderr, the
    access log through its own thread."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JSONFormatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json"},
            "access": {"()": QueuedStreamHandler},
        },
        "loggers": {
            **{
                name: {"handlers": ["stderr"], "level": level, "propagate": False}
                for name in ("uvicorn", "uvicorn.error", "securecore")
            },
            ACCESS_LOGGER: {"handlers": ["access"], "level": level, "propagate": False},
        },
    }
