"""DHCP clients are kept per network namespace: stopping the client of `dh0` in one namespace never signals the
client of a `dh0` in another. Real clients (busybox udhcpc) in throwaway namespaces."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from op_dbus.backends import dhcp
from op_dbus.plugin import Change, UndoLog
from op_dbus.plugins.net import apply as applier
from tests.net.conftest import new_netns, sh

BUSYBOX = shutil.which("busybox")


def step(start: bool) -> Change:
    op = {"op": "dhcp", "start": start, "ifname": "dh0", "family": 4}
    return Change("net", "dhcp4 on dh0", "start-dhcp" if start else "stop-dhcp",
                  payload={**op, "undo": {**op, "start": not start}})


def clients_in(netns: str) -> set[int]:
    """udhcpc processes whose network namespace is `netns`."""
    ino = os.stat(f"/run/netns/{netns}").st_ino
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"udhcpc" in (entry / "cmdline").read_bytes() and os.stat(entry / "ns/net").st_ino == ino:
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def settled(netns: str) -> set[int]:
    """The client of `netns` once it has put itself in the background (its pid file then names it for good)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = clients_in(netns)
        if len(pids) == 1 and all(Path(f"/proc/{p}/stat").read_text().split()[3] != str(os.getpid()) for p in pids):
            return pids
        time.sleep(0.2)
    pytest.fail(f"no backgrounded DHCP client in {netns} after 60 s")


@pytest.fixture
def two_namespaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    if BUSYBOX is None:
        pytest.skip("busybox (its udhcpc applet is the DHCP client here) is not installed: lab/setup-host.sh")
    (tmp_path / "udhcpc").symlink_to(BUSYBOX)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    names = (new_netns(), new_netns())
    for ns in names:
        sh("ip", "-n", ns, "link", "add", "dh0", "type", "veth", "peer", "name", "dh1")
        sh("ip", "-n", ns, "link", "set", "dh0", "up")
    try:
        yield names
    finally:
        for ns in names:
            for pid in clients_in(ns):
                os.kill(pid, signal.SIGKILL)  # only the clients this test started (found in its namespaces)
            sh("ip", "netns", "del", ns, check=False)
        for f in Path("/run").glob("op-dbus-dhcp4-*dh0.pid"):
            f.unlink(missing_ok=True)


def test_stopping_dhcp_in_one_namespace_leaves_the_other_running(two_namespaces: tuple[str, str]) -> None:
    one, two = two_namespaces
    assert dhcp.find_client() is not None
    applier.run_dhcp([step(True)], UndoLog(), one)
    first = settled(one)
    applier.run_dhcp([step(True)], UndoLog(), two)
    second = settled(two)
    applier.run_dhcp([step(False)], UndoLog(), one)
    deadline = time.monotonic() + 30
    while clients_in(one) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert clients_in(one) == set(), "the client in the first namespace was not stopped"
    assert clients_in(two) == second, "stopping the first namespace's client signalled the second's"
    assert first != second
