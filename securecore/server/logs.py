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
import queue
import re
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


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # which worker, when there are several
            "message": record.getMessage(),
        }
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


class QueuedStreamHandler(logging.Handler):
    """JSON lines to stderr, formatted and written in batches by a thread of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.target = logging.StreamHandler()
        self.target.setFormatter(JSONFormatter())
        self.records: queue.SimpleQueue[logging.LogRecord | threading.Event | None] = (
            queue.SimpleQueue()
        )
        self.writer = threading.Thread(target=self._write, name="access-log", daemon=True)
        self.writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        # An access record's arguments are strings and numbers that nothing changes
        # after the call: the thread formats the record as it was.
        if self.records.qsize() >= ACCESS_QUEUE_RECORDS:
            self.flush()
        self.records.put(record)

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
                        lines.append(self._format(item))
            if lines:
                self.target.acquire()
                try:
                    self.target.stream.write("\n".join(lines) + "\n")
                    self.target.flush()
                finally:
                    self.target.release()
            for event in written:
                event.set()  # flush(): everything queued before it is written

    def _format(self, record: logging.LogRecord) -> str:
        try:
            return self.target.format(record)
        except Exception:  # as logging does: a record that cannot be formatted is reported
            self.handleError(record)
            return json.dumps({"level": "error", "message": "an access record failed to format"})

    def flush(self) -> None:
        """Wait until every line queued so far is written."""
        if self.writer.is_alive():
            written = threading.Event()
            self.records.put(written)
            written.wait()

    def close(self) -> None:
        # logging.shutdown() when the process ends (the service's workers are spawned
        # interpreters, which end through it too), or a new configuration: the lines
        # still queued are written first.
        if self.writer.is_alive():
            self.records.put(None)
            self.writer.join()
        super().close()


def flush_access_log() -> None:
    """Write the access lines still queued. The service calls it when it stops:
    uvicorn ends a process stopped by SIGTERM by raising the signal again once it
    has shut down, which ends it past atexit and logging's own shutdown."""
    for handler in logging.getLogger("uvicorn.access").handlers:
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
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
        },
    }
