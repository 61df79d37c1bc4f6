"""Structured logs on stderr: one JSON object per line, with the journal's priority prefix under systemd."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
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


class RepeatLimiter(logging.Filter):
    """Let through at most `burst` identical lines (same level, event and message) per `window` seconds; the first
    line after a quiet spell says how many were held back ("N similar messages suppressed"), so a flood (a source
    failing in a loop, a client hammering the agent) cannot fill the journal and hide everything else."""

    def __init__(self, burst: int = 5, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst, self.window, self.clock = burst, window, clock
        self._seen: dict[tuple[int, str, str], list[float | int]] = {}  # key -> [window start, count, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, getattr(record, "event", "log"), record.getMessage())
        now = self.clock()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            suppressed = int(entry[2]) if entry is not None else 0
            self._seen[key] = [now, 1, 0]
            if len(self._seen) > 1024:  # forget lines not seen for a window; bounded whatever the messages
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
            if suppressed:
                record.fields = {**getattr(record, "fields", {}), "suppressed": suppressed}
                record.msg = f"{record.getMessage()} ({suppressed} similar messages suppressed)"
                record.args = ()
            return True
        entry[1] += 1
        if entry[1] <= self.burst:
            return True
        entry[2] += 1
        return False


def setup(stream: TextIO | None = None, level: int = logging.INFO) -> logging.Logger:
    logger = logging.getLogger("op_dbus.agent")
    logger.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    # JOURNAL_STREAM is set when stderr is connected to the journal (systemd.exec(5)).
    handler.setFormatter(JsonFormatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    handler.addFilter(RepeatLimiter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def emit(logger: logging.Logger, level: int, event: str, msg: str, **fields: Any) -> None:
    logger.log(level, msg, extra={"event": event, "fields": fields})
