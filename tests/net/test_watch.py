"""The net plugin's watch against the real kernel (a throwaway namespace) and a private OVS: rtnetlink
notifications and the OVSDB monitor report changes to declared interfaces, and only those."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

from op_dbus.errors import ServiceUnavailable
from op_dbus.plugin import SUBSCRIBED, Context, Settings, WatchEvent
from op_dbus.plugins.net import NetPlugin, NetSection
from tests.net.conftest import sh, stop_ovs


class Events:
    """A watch drained by a task (cancelling a pending `anext` would close the generator), read with timeouts."""

    def __init__(self, watch: AsyncIterator[WatchEvent]) -> None:
        self.queue: asyncio.Queue[WatchEvent | BaseException] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._drain(watch))

    async def _drain(self, watch: AsyncIterator[WatchEvent]) -> None:
        try:
            async for event in watch:
                self.queue.put_nowait(event)
        except Exception as exc:
            self.queue.put_nowait(exc)

    async def next(self, timeout: float = 2.0) -> WatchEvent:
        item = await asyncio.wait_for(self.queue.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def none(self, within: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            await self.next(within)

    async def aclose(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def section(doc: dict[str, Any]) -> NetSection:
    return NetSection.model_validate(doc)


async def test_kernel_changes_to_declared_interfaces_are_reported(netns: str) -> None:
    sh("ip", "-n", netns, "link", "add", "w0", "type", "veth", "peer", "name", "w1")
    sh("ip", "-n", netns, "addr", "add", "198.18.4.1/24", "dev", "w0")
    sh("ip", "-n", netns, "link", "set", "w0", "up")
    scope = section({"interfaces": [{"name": "w0", "type": "veth", "veth": {"peer": "w1"},
                                     "ipv4": {"enabled": True, "address": [{"ip": "198.18.4.1", "prefix": 24}]}}]})
    async with Context(Settings(netns=netns)) as ctx:
        events = Events(NetPlugin().watch(scope, ctx))
        assert (await events.next()).source == SUBSCRIBED
        ip = subprocess.Popen(["ip", "-n", netns, "addr", "del", "198.18.4.1/24", "dev", "w0"])
        assert ip.wait() == 0
        event = await events.next()
        assert event.objects == ("interface w0",) and event.source == "rtnetlink RTM_DELADDR 198.18.4.1/24"
        assert event.origin["netlink_portid"] == ip.pid  # who asked: `ip`'s socket is bound to its pid
        sh("ip", "-n", netns, "link", "add", "other0", "type", "veth", "peer", "name", "other1")
        await events.none()  # not declared: not reported
        sh("ip", "-n", netns, "link", "set", "w0", "mtu", "1400")
        event = await events.next()
        assert event.objects == ("interface w0",) and event.source == "rtnetlink RTM_NEWLINK"
        await events.aclose()


async def test_ovsdb_changes_are_reported_and_its_loss_raises(ovs: Any) -> None:
    ovs.vsctl("add-br", "wbr0", "--", "set", "bridge", "wbr0", "datapath_type=netdev")
    sh("ip", "-n", ovs.netns, "link", "add", "wp0", "type", "veth", "peer", "name", "wp1")
    ovs.vsctl("add-port", "wbr0", "wp0")
    scope = section({"interfaces": [{"name": "wbr0", "type": "ovs-bridge", "ports": ["wp0"]}], "ovsdb": ovs.sock})
    async with Context(Settings(netns=ovs.netns)) as ctx:
        events = Events(NetPlugin().watch(scope, ctx))
        assert (await events.next()).source == SUBSCRIBED
        ovs.vsctl("del-port", "wbr0", "wp0")
        seen: set[str] = set()
        while not {"interface wbr0", "interface wp0"} <= seen:
            event = await events.next()
            seen |= set(event.objects)
        stop_ovs(ovs)
        with pytest.raises(ServiceUnavailable, match="OVSDB"):
            while True:
                await events.next()
        await events.aclose()
