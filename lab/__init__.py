"""The lab: a booted Debian 12 system container (systemd-nspawn --boot) that tests and the demo manage as a real machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The project checkout this package belongs to (the lab sits next to ``src/``).
PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Shared, machine-wide cache of built artefacts (rootfs trees, dependency wheels, the helper venv).
CACHE_DIR = Path(os.environ.get("OP_DBUS_LAB_CACHE", "/var/cache/op-dbus-lab"))

#: Per-checkout working area (the wheelhouse with this checkout's own op-dbus wheel).
WORK_DIR = Path(os.environ.get("OP_DBUS_LAB_WORK", str(PROJECT_ROOT / ".lab")))


class LabError(RuntimeError):
    """The lab could not be built, booted or driven; the message says what to do."""


def log(message: str) -> None:
    """Progress output for humans, on stderr so it never mixes with a command's result."""
    print(f"[lab] {message}", file=sys.stderr, flush=True)
