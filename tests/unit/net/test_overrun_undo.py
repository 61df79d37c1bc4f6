"""When the kernel drops replies (ENOBUFS), the undo log keeps every step that may have taken effect.

Pure logic over a stand-in socket; the real overrun against the kernel is in tests/net/test_scale.py.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest

from op_dbus.backends import netlink as nl
from op_dbus.plugin import Change, UndoLog
from op_dbus.plugins.net import apply as applier


class OverrunSocket:
    """Answers the first request, refuses the second, and loses the replies of the rest."""

    def batch(self, requests: list[nl.Request], **_: Any) -> list[nl.Reply]:
        overrun = nl.NetlinkOverrun()
        overrun.replies = [nl.Reply(done=True), nl.Reply(error=errno.EEXIST, done=True)] + [
            nl.Reply() for _ in requests[2:]]
        raise overrun

    def indexes(self, names: list[str]) -> dict[str, int]:
        return {n: 7 for n in names}


def add_address(ip: str) -> Change:
    payload = {"op": "addr", "add": True, "ifname": "v0", "ip": ip, "prefix": 32,
               "undo": {"op": "addr", "add": False, "ifname": "v0", "ip": ip, "prefix": 32}}
    return Change("net", "v0", "add-address", None, {"ip": ip}, payload=payload)


def test_unanswered_requests_keep_their_inverse_marked_unknown() -> None:
    undo = UndoLog()
    changes = [add_address(f"198.18.0.{i}") for i in range(1, 5)]
    with pytest.raises(nl.NetlinkOverrun):
        applier.run_netlink(OverrunSocket(), changes, undo)  # type: ignore[arg-type]
    kept = [(c.payload["ip"], bool(c.payload.get("outcome_unknown"))) for c in undo.entries]
    # the refused request's inverse is dropped; the answered one is certain; the lost ones may have happened
    assert kept == [("198.18.0.1", False), ("198.18.0.3", True), ("198.18.0.4", True)]


def test_replaying_an_unknown_removal_tolerates_the_object_being_there() -> None:
    readd = Change("net", "v0", "add-address", None, None,
                   payload={"op": "addr", "add": True, "ifname": "v0", "ip": "198.18.0.9", "prefix": 32,
                            "outcome_unknown": True})
    certain = Change("net", "v0", "add-address", None, None,
                     payload={"op": "addr", "add": True, "ifname": "v0", "ip": "198.18.0.9", "prefix": 32})
    exists = nl.Reply(error=errno.EEXIST, done=True)
    assert applier._already_gone(readd, exists)
    assert not applier._already_gone(certain, exists)
