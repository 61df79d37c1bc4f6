"""The intent record: what an apply in progress is doing, written before it changes anything.

`<state_dir>/transaction.json` holds the transaction's id, the process, the checkpoint (the state of
everything the plan touches, before the change, as a state document), the planned changes, the
settings it ran with, and its phase:

    applying          changes are being made; if the file outlives its process (which no longer holds
                      the state lock), the next op-dbus command converges back to the checkpoint
    confirm-pending   applied and recorded; reverted to the checkpoint at `deadline` unless confirmed

One fsync'd write per phase, so the cost does not grow with the number of changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from op_dbus.errors import LedgerError
from op_dbus.files import atomic_write, fsync_dir

JOURNAL_NAME = "transaction.json"


@dataclass
class Intent:
    id: str
    pid: int
    started: float
    source: str
    checkpoint: dict[str, Any]
    changes: list[dict[str, Any]]
    settings: dict[str, Any]
    phase: str = "applying"
    deadline: float | None = None
    block: int | None = None
    watchdog_pid: int | None = None
    irreversible: list[str] = field(default_factory=list)

    @classmethod
    def new(cls, source: str, checkpoint: dict[str, Any], changes: list[dict[str, Any]],
            settings: dict[str, Any]) -> Intent:
        return cls(uuid.uuid4().hex, os.getpid(), time.time(), source, checkpoint, changes, settings)


class Journal:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / JOURNAL_NAME

    def read(self) -> Intent | None:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise LedgerError(f"the intent record {self.path} is unreadable ({e}); an interrupted apply may need "
                              "attention",
                              hint="compare the system with `op-dbus verify --current`, then remove it") from None
        try:
            return Intent(**data)
        except TypeError as e:
            raise LedgerError(f"the intent record {self.path} is not one this op-dbus wrote: {e}") from None

    def write(self, intent: Intent) -> None:
        atomic_write(self.path, json.dumps(asdict(intent), separators=(",", ":")).encode(), 0o600)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            fsync_dir(self.path.parent)
