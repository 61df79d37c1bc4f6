"""Thousands of objects in one apply, each op-dbus command a whole process in a real network namespace.

Not timed: these prove that a batch of thousands of netlink requests neither hangs nor overruns the socket,
that a converged state diffs clean at that size, and that a failure at that size is rolled back and recorded.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from op_dbus.backends import netlink as nl

from .conftest import sh

N = 3000
# Generous: the whole apply of 3,000 addresses takes a few seconds; a hang is what this bounds.
DEADLINE = 300


def state(n: int, *, failing_route: bool = False) -> dict[str, Any]:
    addresses = [{"ip": f"198.18.{i // 250}.{i % 250 + 1}", "prefix": 32} for i in range(n)]
    net: dict[str, Any] = {"interfaces": [{"name": "v0", "type": "veth", "state": "up", "veth": {"peer": "v0p"},
                                           "ipv4": {"address": addresses}}]}
    if failing_route:
        # The kernel refuses a gateway that is not on any link: this fails after every address was added.
        net["routes"] = [{"destination": "198.19.0.0/24", "next-hop-address": "203.0.113.1",
                          "next-hop-interface": "v0"}]
    return {"version": 1, "plugins": {"net": net}}


def op_dbus(tmp_path: Path, netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "op_dbus", "--state-dir", str(tmp_path / "state"), "--netns", netns, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE)


def write(tmp_path: Path, doc: dict[str, Any], name: str = "state.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def v4_addresses(netns: str) -> int:
    return len(sh("ip", "-n", netns, "-o", "-4", "addr", "show", "dev", "v0").splitlines())


def test_thousands_of_addresses_apply_and_diff_clean(tmp_path: Path, netns: str) -> None:
    path = write(tmp_path, state(N))
    res = op_dbus(tmp_path, netns, "apply", path)
    assert res.returncode == 0, res.stderr
    assert v4_addresses(netns) == N
    res = op_dbus(tmp_path, netns, "diff", path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no difference" in res.stdout


def test_a_failure_at_thousands_of_steps_is_rolled_back_and_recorded(tmp_path: Path, netns: str) -> None:
    res = op_dbus(tmp_path, netns, "apply", write(tmp_path, state(N, failing_route=True)))
    assert res.returncode == 4, res.stderr
    assert "rolled back" in res.stderr
    assert "v0" not in sh("ip", "-n", netns, "-o", "link")  # the veth and its 3,000 addresses are gone again
    listing = op_dbus(tmp_path, netns, "-o", "json", "blockchain", "show", "1")
    assert listing.returncode == 0, listing.stderr
    block = json.loads(listing.stdout)
    assert block["kind"] == "failed"
    assert block["meta"]["rolled_back"] is True and block["meta"]["undone"] == N + 1
    assert sum(1 for c in block["changes"] if c.get("undone")) == N + 1
    # The transaction record was cleared: the next command has nothing to recover.
    assert (tmp_path / "state" / "transaction.json").stat().st_size == 0
    status = op_dbus(tmp_path, netns, "diff", write(tmp_path, state(1), "small.json"))
    assert "reverted" not in status.stdout + status.stderr


def test_a_batch_larger_than_the_receive_buffer_does_not_hang(netns: str) -> None:
    sh("ip", "-n", netns, "link", "add", "v0", "type", "veth", "peer", "name", "v0p")
    with nl.Netlink(netns, timeout=30) as sock:
        index = sock.indexes(["v0"])["v0"]
        requests = [nl.addr_req(True, index, f"198.18.{i // 250}.{i % 250 + 1}", 32) for i in range(N)]
        # A tiny buffer: the window shrinks to fit it and every reply still arrives.
        sock.sock.setsockopt(socket.SOL_SOCKET, nl.SO_RCVBUFFORCE, 4096)
        sock.fit_window()
        replies = sock.batch(requests[:500])
        assert [r.error for r in replies] == [0] * 500
        # Forced past the buffer (the old way: everything in flight at once): the kernel drops replies, and that
        # is an error naming ENOBUFS, raised at once, never a wait for replies that will not come.
        with pytest.raises(nl.NetlinkOverrun) as overrun:
            sock.batch(requests[500:], window=len(requests))
        assert overrun.value.code == "ENOBUFS"
        assert not all(r.done for r in overrun.value.replies)
        # The socket stays usable: re-reading the state shows what took effect.
        sock.fit_window()
        present = {a.ip for a in sock.addresses(socket.AF_INET) if a.index == index}
        assert len(present) > 500
        again = sock.batch(requests)
        assert {r.error for r in again} <= {0, errno.EEXIST}
        assert len({a.ip for a in sock.addresses(socket.AF_INET) if a.index == index}) == N


def test_a_lost_reply_times_out_instead_of_hanging(netns: str) -> None:
    with nl.Netlink(netns, timeout=0.5) as sock:
        sock.seq += 1  # a reply that will never come: nothing was sent with this sequence number
        with pytest.raises(nl.BackendError, match=r"no reply from the kernel within 0\.5 s"):
            list(sock._read())
