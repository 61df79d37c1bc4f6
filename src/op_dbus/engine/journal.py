"""The intent record, kept importable from here: it lives in op_dbus.journal, under the model layer."""

from __future__ import annotations

from op_dbus.journal import JOURNAL_NAME, MAX_RECORD, Intent, Journal

__all__ = ["JOURNAL_NAME", "MAX_RECORD", "Intent", "Journal"]
