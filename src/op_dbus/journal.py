"""The intent record: what an apply in progress is doing, written before it changes anything.

`<state_dir>/transaction.json` holds the transaction's id, the process, the checkpoint (the state of
everything the plan touches, before the change, as a state document), the planned changes, the
settings it ran with, and its phase:

    applying          changes are being made; if the file outlives its process (which no longer holds
                      the state lock), the next op-dbus command converges back to the checkpoint
    confirm-pending   applied and recorded; reverted to the checkpoint at `deadline` unless confirmed

The file stays in place between transactions (empty means none), so starting a transaction costs one
write and one fdatasync, with no directory fsync: the change only begins once that write is durable, and
a torn write (a crash inside it) can only leave a prefix of the record, which is not valid JSON and means
nothing was applied yet. The confirm-pending update replaces the file atomically instead, since by then
there is something to lose. Ending a transaction truncates the file without waiting for the disk: should
the truncation be lost, the record names a transaction whose block is in the log, and recovery only
tidies it away.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from op_dbus import files
from op_dbus.errors import LedgerError

JOURNAL_NAME = "transaction.json"
MAX_RECORD = 256 * 1024 * 1024  # a checkpoint of every object a plan touches; far above any real one


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
        return cls(os.urandom(16).hex(), os.getpid(), time.time(), source, checkpoint, changes, settings)


class Journal:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / JOURNAL_NAME

    def read(self) -> Intent | None:
        try:
            raw = files.read_checked(self.path, "intent record", limit=MAX_RECORD)
            if len(raw) > MAX_RECORD:  # never mistaken for a torn write below
                raise LedgerError(f"the intent record {self.path} is larger than {MAX_RECORD} bytes; an interrupted "
                                  "apply may need attention",
                                  hint="compare the system with `op-dbus verify --current`, then empty the file")
            if not raw.strip():
                return None
            data = json.loads(raw)
        except FileNotFoundError:
            return None
        except (files.UnsafeFile, LedgerError):
            raise
        except ValueError:
            if raw.lstrip().startswith(b"{") and not raw.rstrip().endswith(b"}"):
                return None  # torn while it was being written: the apply had not started
            raise LedgerError(f"the intent record {self.path} is not valid JSON; an interrupted apply may need "
                              "attention",
                              hint="compare the system with `op-dbus verify --current`, then empty the file") from None
        except OSError as e:
            raise LedgerError(f"the intent record {self.path} is unreadable ({e}); an interrupted apply may need "
                              "attention",
                              hint="compare the system with `op-dbus verify --current`, then remove it") from None
        try:
            return Intent(**data)
        except TypeError as e:
            raise LedgerError(f"the intent record {self.path} is not one this op-dbus wrote: {e}") from None

    def pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def begin(self, intent: Intent) -> None:
        """Write a new transaction's record in place (see the module docstring for why this is safe)."""
        data = json.dumps(vars(intent), separators=(",", ":")).encode()
        created = not self.path.exists()
        fd, _ = files.open_checked(self.path, "intent record", flags=os.O_WRONLY | os.O_CREAT)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        if created:
            files.fsync_dir(self.path.parent)

    def write(self, intent: Intent) -> None:
        files.atomic_write(self.path, json.dumps(vars(intent), separators=(",", ":")).encode(), 0o600,
                           what="intent record")

    def remove(self) -> None:
        try:  # through a checked descriptor: truncating by path would follow a link planted in its place
            fd, _ = files.open_checked(self.path, "intent record", flags=os.O_WRONLY)
        except FileNotFoundError:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)
