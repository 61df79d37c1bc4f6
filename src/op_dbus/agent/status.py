"""The agent's status file (`<state_dir>/agent.json`): what `op-dbus status` shows."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from op_dbus import files

STATUS_NAME = "agent.json"


def status_path(state_dir: Path) -> Path:
    return state_dir / STATUS_NAME


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    """Replace the status file atomically. It is rewritten often and describes a running process, so it is
    not fsynced: after a crash a stale file is recognised by its pid."""
    files.atomic_write(status_path(state_dir), json.dumps(status, indent=1, default=str).encode(), 0o644,
                       durable=False, what="agent status file")


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last status the agent wrote, with `running` telling whether that process is still alive."""
    try:
        status: dict[str, Any] = json.loads(files.read_checked(status_path(state_dir), "agent status file",
                                                               limit=1 << 20))
    except files.UnsafeFile:
        raise
    except (OSError, ValueError):
        return None
    status["running"] = _alive(status.get("pid"))
    return status


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        return b"op-dbus" in cmdline or b"op_dbus" in cmdline
    return False
