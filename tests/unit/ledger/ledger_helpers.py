"""Sample blocks for the audit log tests."""

from __future__ import annotations

import os
from typing import Any

from op_dbus.ledger import Ledger


def sample_state(i: int) -> dict[str, Any]:
    return {
        "version": 1,
        "plugins": {
            "systemd": {"units": {"nginx.service": {"enabled": i % 2 == 0, "MemoryMax": 2**64 - 1}}},
            "net": {"interfaces": [{"name": "br0", "mtu": 1500 + i}]},
        },
    }


def sample_changes(i: int) -> list[dict[str, Any]]:
    return [{"plugin": "net", "object": "br0", "action": "modify", "before": {"mtu": 1499 + i}, "after": {"mtu": 1500 + i}}]


def fill(ledger: Ledger, n: int) -> None:
    for i in range(len(ledger), len(ledger) + n):
        kind = "genesis" if i == 0 else "apply"
        ledger.append(
            kind, sample_changes(i), sample_state(i), actor={"user": "root", "pid": os.getpid()}, summary=f"step {i}"
        )
