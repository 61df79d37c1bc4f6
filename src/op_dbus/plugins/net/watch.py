"""Change notifications for the net plugin: rtnetlink multicast groups and an OVSDB monitor.

Links, addresses and routes (IPv4 and IPv6) come from the kernel's own notifications; OVS bridges, ports
and interfaces from an OVSDB `monitor` of those tables. Only what touches a declared interface (or, for
routes, any route when routes or gateways are declared) is reported. A notification overflow or an
unresolvable interface index is reported as "anything may have changed".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from op_dbus.backends import netlink as nl
from op_dbus.backends.ovsdb import Ovsdb
from op_dbus.errors import ServiceUnavailable
from op_dbus.plugin import SUBSCRIBED, WatchEvent

from .model import OVS_TYPES, NetSection

LINK_TYPES = {nl.RTM_NEWLINK: "RTM_NEWLINK", nl.RTM_DELLINK: "RTM_DELLINK"}
ADDR_TYPES = {nl.RTM_NEWADDR: "RTM_NEWADDR", nl.RTM_DELADDR: "RTM_DELADDR"}
ROUTE_TYPES = {nl.RTM_NEWROUTE: "RTM_NEWROUTE", nl.RTM_DELROUTE: "RTM_DELROUTE"}
OVS_MONITOR = {
    "Bridge": {"columns": ["name", "ports", "datapath_type"]},
    "Port": {"columns": ["name", "interfaces"]},
    "Interface": {"columns": ["name", "type"]},
}


def declared_names(scope: NetSection) -> set[str]:
    names = {i.name for i in scope.interfaces}
    for i in scope.interfaces:
        names |= set(i.ports or [])
        if i.veth is not None and i.veth.peer_netns is None:
            names.add(i.veth.peer)
    return names


def routes_matter(scope: NetSection) -> bool:
    if scope.routes:
        return True
    return any(ip is not None and ip.gateway for i in scope.interfaces for ip in (i.ipv4, i.ipv6))


def origin_of(portid: int) -> dict[str, Any]:
    """Who asked the kernel for a change: a notification carries the requesting socket's port id, which for
    most tools is their pid. Read at once, while a short-lived `ip` may still be there to name."""
    if portid == 0:
        return {}
    who: dict[str, Any] = {"netlink_portid": portid}
    try:
        with open(f"/proc/{portid}/cmdline", "rb") as f:
            command = f.read(1000).replace(b"\0", b" ").decode(errors="replace").strip()
        uid = os.stat(f"/proc/{portid}").st_uid
    except OSError:
        return who
    if command:
        who.update(pid=portid, uid=uid, command=command)
    return who


async def watch(scope: NetSection, netns: str | None, ovsdb_path: str, timeout: float,
                plugin: str = "net") -> AsyncIterator[WatchEvent]:
    names = declared_names(scope)
    if not names and not scope.routes:
        return
    queue: asyncio.Queue[WatchEvent | BaseException] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    monitor = nl.Monitor(netns)
    with nl.Netlink(netns) as sock:
        index: dict[int, str] = {link.index: link.name for link in sock.links()}
    want_routes = routes_matter(scope)

    def readable() -> None:
        try:
            messages = monitor.read()
        except ServiceUnavailable as exc:
            queue.put_nowait(exc)
            return
        if messages is None:
            queue.put_nowait(WatchEvent(plugin, (), "rtnetlink overflow (ENOBUFS)"))
            return
        for mtype, payload, portid in messages:
            try:
                event = _event(mtype, payload)
            except nl.MalformedMessage as exc:
                # Cannot tell what changed: a full re-read (as after an overflow) finds it.
                event = WatchEvent(plugin, (), f"rtnetlink: {exc.message}")
            if event is not None:
                event.origin = origin_of(portid)
                queue.put_nowait(event)

    def _event(mtype: int, payload: bytes) -> WatchEvent | None:
        if mtype in LINK_TYPES:
            link = nl.decode_link(payload)
            old = index.get(link.index)
            if mtype == nl.RTM_DELLINK:
                index.pop(link.index, None)
            else:
                index[link.index] = link.name
            hit = {link.name, old} & names
            return WatchEvent(plugin, tuple(sorted(f"interface {n}" for n in hit if n)),
                              f"rtnetlink {LINK_TYPES[mtype]}") if hit else None
        if mtype in ADDR_TYPES:
            addr = nl.decode_addr(payload)
            name = index.get(addr.index)
            if name is None or name in names:
                objects = (f"interface {name}",) if name else ()
                return WatchEvent(plugin, objects, f"rtnetlink {ADDR_TYPES[mtype]} {addr.ip}/{addr.prefix}")
            return None
        if mtype in ROUTE_TYPES and want_routes:
            route = nl.decode_route(payload)
            if route.table == nl.RT_TABLE_LOCAL:
                return None
            dst = f"{route.dst or 'default'}/{route.dst_len}" if route.dst else "default"
            return WatchEvent(plugin, (), f"rtnetlink {ROUTE_TYPES[mtype]} {dst}")
        return None

    loop.add_reader(monitor.fileno(), readable)
    ovs_task = None
    db = None
    subscribed = asyncio.Event()
    if any(i.type in OVS_TYPES for i in scope.interfaces):
        db = await Ovsdb.connect(ovsdb_path, timeout=timeout)
        ovs_task = asyncio.ensure_future(_ovs(db, names, queue, plugin, subscribed))
    try:
        if ovs_task is not None:
            await subscribed.wait()
        yield WatchEvent(plugin, source=SUBSCRIBED)
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        loop.remove_reader(monitor.fileno())
        monitor.close()
        if ovs_task is not None:
            ovs_task.cancel()
            with contextlib.suppress(BaseException):
                await ovs_task
        if db is not None:
            await db.close()


async def _ovs(db: Ovsdb, names: set[str], queue: asyncio.Queue[Any], plugin: str, subscribed: asyncio.Event) -> None:
    """Report OVSDB row changes of bridges, ports and interfaces; the loss of ovsdb-server ends the watch."""
    try:
        _mon, _initial, updates = await db.monitor(OVS_MONITOR)
        subscribed.set()
        while True:
            update = await updates.get()
            if update is None:
                queue.put_nowait(ServiceUnavailable(f"the OVSDB connection to {db.path} was lost"))
                return
            hit: set[str] = set()
            # a port joining or leaving a declared bridge changes that bridge's row too
            for rows in update.values():
                for row in rows.values():
                    for version in (row.get("new"), row.get("old")):
                        if version and version.get("name") in names:
                            hit.add(version["name"])
            if hit:
                objects = tuple(sorted(f"interface {n}" for n in hit if n))
                queue.put_nowait(WatchEvent(plugin, objects, "ovsdb update " + ",".join(sorted(update))))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        queue.put_nowait(ServiceUnavailable(f"the OVSDB monitor failed: {exc}"))
    finally:
        subscribed.set()  # a failure to subscribe is in the queue; the watch raises it
