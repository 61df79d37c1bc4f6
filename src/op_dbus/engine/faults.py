"""Named fault points for crash testing: `OP_DBUS_FAULTS=before-append` makes op-dbus kill itself with
SIGKILL when it reaches that point, exactly as `kill -9` from outside would, but deterministically.

Points: before-apply, after-plugin:NAME, before-append, after-append, confirm-pending. Honoured only with the
test suite's switch on (`files.testing_enabled`: OP_DBUS_TESTING=1 and the root-owned /run/op-dbus-testing), so
a variable left in a unit file cannot make a production op-dbus kill itself mid-apply. Unset in normal use; the
check then costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import sys

from op_dbus import files


def _armed() -> frozenset[str]:
    names = frozenset(p for p in os.environ.get("OP_DBUS_FAULTS", "").split(",") if p)
    if names and not files.testing_enabled():
        sys.stderr.write("op-dbus: OP_DBUS_FAULTS is ignored: fault points work only in the test suite "
                         f"({files.TEST_SWITCH_ENV}=1 and a root-owned {files.TEST_SWITCH_FILE})\n")
        return frozenset()
    return names


_ARMED = _armed()


def point(name: str) -> None:
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
