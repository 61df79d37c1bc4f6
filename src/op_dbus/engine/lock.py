"""The state-dir lock, kept importable from here: it lives in op_dbus.lock, under the model layer."""

from __future__ import annotations

from op_dbus.lock import LOCK_NAME, StateLock

__all__ = ["LOCK_NAME", "StateLock"]
