"""The test-only switch that makes op-dbus honour its fault points and backend overrides (see op_dbus.files)."""

from __future__ import annotations

import os
from collections.abc import Callable

from op_dbus import files


def switch_on_testing(run: Callable[[list[str]], object] | None = None) -> dict[str, str]:
    """Turn on the test-only switch (fault points, OP_DBUS_PCT): the root-owned marker file, here or inside a lab
    machine through `run`; returns the environment variable that goes with it."""
    marker = files.TEST_SWITCH_FILE
    if run is not None:
        run(["sh", "-c", f"touch {marker} && chown root:root {marker} && chmod 0644 {marker}"])
    elif os.geteuid() == 0 and not marker.exists():
        marker.touch(mode=0o644)  # left in place: other test runs on this machine may be using it
        marker.chmod(0o644)
    return {files.TEST_SWITCH_ENV: "1"}
