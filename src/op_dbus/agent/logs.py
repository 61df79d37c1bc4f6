"""Structured logs on stderr: one JSON object per line, with the journal's priority prefix under systemd."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

# syslog priorities, which journald reads from a "<N>" line prefix (SyslogLevelPrefix=yes, the default)
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JsonFormatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "msg": record.getMessage(),
        }
        body.update(getattr(record, "fields", {}))
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        line = json.dumps(body, default=str, separators=(",", ":"))
        return f"<{_PRIORITY.get(record.levelno, 6)}>{line}" if self.journal else line


def setup(stream: TextIO | None = None, level: int = logging.INFO) -> logging.Logger:
    logger = logging.getLogger("op_dbus.agent")
    logger.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    # JOURNAL_STREAM is set when stderr is connected to the journal (systemd.exec(5)).
    handler.setFormatter(JsonFormatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def emit(logger: logging.Logger, level: int, event: str, msg: str, **fields: Any) -> None:
    logger.log(level, msg, extra={"event": event, "fields": fields})
