"""The agent's reporter: a thread that sends each new checkpoint to the collectors, retrying with backoff.

It opens its own handle on the audit log (SQLite connections stay in their thread) and looks at the log's size
once a second, so no append site needs to know about it. A collector that is down is a gap: that collector is
tried again after 1, 2, 4 ... up to 300 seconds, and the others are not held up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from op_dbus.fleet.client import Collector, Outcome, send, send_footprint

log = logging.getLogger("op_dbus.agent.report")

POLL = 1.0
MAX_BACKOFF = 300.0


class Reporter:
    def __init__(self, open_ledger: Callable[[], Any], collectors: list[Collector], *, timeout: float = 5.0,
                 on_outcome: Callable[[Outcome], None] | None = None) -> None:
        self._open_ledger = open_ledger
        self.collectors = collectors
        self.timeout = timeout
        self._on_outcome = on_outcome
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="op-dbus-report", daemon=True)
        self.last: dict[str, Outcome] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def _run(self) -> None:
        ledger = self._open_ledger()
        try:
            sent: dict[str, int] = {c.url: 0 for c in self.collectors}
            retry_at: dict[str, float] = {c.url: 0.0 for c in self.collectors}
            backoff: dict[str, float] = {c.url: 1.0 for c in self.collectors}
            while not self._stop.is_set():
                size = len(ledger)
                for target in self.collectors:
                    if self._stop.is_set() or size == 0 or sent[target.url] >= size:
                        continue
                    if time.monotonic() < retry_at[target.url]:
                        continue
                    outcome = send(ledger, target, timeout=self.timeout)
                    self.last[target.url] = outcome
                    if outcome.ok:
                        sent[target.url], backoff[target.url] = outcome.size, 1.0
                        send_footprint(ledger, target, "agent", timeout=self.timeout)
                    else:
                        retry_at[target.url] = time.monotonic() + backoff[target.url]
                        backoff[target.url] = min(backoff[target.url] * 2, MAX_BACKOFF)
                        log.warning("collector %s: %s (retry in %.0f s)", target.url, outcome.message,
                                    retry_at[target.url] - time.monotonic())
                    if self._on_outcome is not None:
                        self._on_outcome(outcome)
                self._stop.wait(POLL)
        finally:
            ledger.close()
