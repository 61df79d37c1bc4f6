"""Named fault points for crash testing: `OP_DBUS_FAULTS=before-append` makes op-dbus kill itself with
SIGKILL when it reaches that point, exactly as `kill -9` from outside would, but deterministically.

Points: before-apply, after-plugin:NAME, before-append, after-append, confirm-pending. Unset in normal use;
the check costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_ARMED = frozenset(p for p in os.environ.get("OP_DBUS_FAULTS", "").split(",") if p)


def point(name: str) -> None:
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
