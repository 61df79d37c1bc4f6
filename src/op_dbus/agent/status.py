"""The agent's status file (`<state_dir>/agent.json`): what `op-dbus status` shows."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

STATUS_NAME = "agent.json"


def status_path(state_dir: Path) -> Path:
    return state_dir / STATUS_NAME


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    """Replace the status file atomically. It is rewritten often and describes a running process, so it is
    not fsynced: after a crash a stale file is recognised by its pid."""
    path = status_path(state_dir)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status, indent=1, default=str))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last status the agent wrote, with `running` telling whether that process is still alive."""
    try:
        status: dict[str, Any] = json.loads(status_path(state_dir).read_text())
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
