"""Structured JSON logs with secrets masked.

One JSON object per line: time, level, logger, message and the record's extra
fields. Values under secret-looking keys and anything shaped like a bearer
token or JWT are replaced by "***" before they are written.
"""

from __future__ import annotations

import json
import logging
import re
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


def log_config(level: str = "INFO") -> dict:
    """A logging.config dictionary for uvicorn and the service: JSON to stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JSONFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
        "loggers": {
            name: {"handlers": ["stderr"], "level": level, "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "securecore")
        },
    }
