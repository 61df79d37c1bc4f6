"""One apply at a time per state directory: an flock(2) that dies with its holder, and who holds it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from op_dbus import files
from op_dbus.errors import LockHeld

LOCK_NAME = "lock"


class StateLock:
    """Exclusive lock on `<state_dir>/lock`. The kernel drops it when the holder exits or is killed, so a
    crashed apply never leaves a stale lock behind; the file's content only says who holds it now."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(files.read_checked(self.path, "lock file", limit=4096) or "{}")  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def try_acquire(self) -> bool:
        # Checked like every trusted file: a lock another user owns, can write or has replaced by a link is refused
        # (exit 2) rather than reused.
        fd, _ = files.open_checked(self.path, "lock file", flags=os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "command": " ".join(sys.argv)[:300]}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return True

    def acquire(self, wait: float = 0.0) -> StateLock:
        deadline = time.monotonic() + wait
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                who = self.holder()
                raise LockHeld(
                    f"another op-dbus holds {self.path}: pid {who.get('pid', '?')} since {who.get('since', '?')}"
                    f" ({who.get('command', 'unknown command')})",
                    hint="wait for it to finish, or pass --wait SECONDS")
            time.sleep(0.05)
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
