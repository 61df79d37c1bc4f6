"""DNS of the `net` section through systemd-resolved's D-Bus API (org.freedesktop.resolve1): servers and search domains.

resolved takes DNS settings per link over D-Bus (its global servers come only from resolved.conf), so
nmstate's global `dns-resolver.config` is set on one link, chosen as nmstate's NetworkManager backend
does: the first interface of the file that has static addresses.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from op_dbus.backends import dbus
from op_dbus.backends import netlink as nl
from op_dbus.errors import InvalidInput
from op_dbus.plugin import Change, UndoLog

from .model import DnsConfig, NetSection

RESOLVE1 = "org.freedesktop.resolve1"
RESOLVE1_PATH = "/org/freedesktop/resolve1"
MANAGER = "org.freedesktop.resolve1.Manager"
LINK = "org.freedesktop.resolve1.Link"


def carrier(section: NetSection) -> str | None:
    """The interface that carries the file's DNS settings: the first one with static addresses."""
    for iface in section.interfaces:
        if iface.state == "absent":
            continue
        for ip in (iface.ipv4, iface.ipv6):
            if ip is not None and ip.enabled is not False and not ip.dhcp and ip.address:
                return iface.name
    return None



async def resolved_missing(bus: dbus.Client) -> str | None:
    """Why resolved cannot take DNS settings, or None when it runs."""
    (owned,) = await bus.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner",
                              "s", [RESOLVE1])
    if owned:
        return None
    return ("systemd-resolved is not running (org.freedesktop.resolve1 has no owner on the system bus); op-dbus sets "
            "DNS only through it: start systemd-resolved, or leave dns-resolver out")


async def read(bus: dbus.Client, ifindex: int) -> DnsConfig:
    (path,) = await bus.call(RESOLVE1, RESOLVE1_PATH, MANAGER, "GetLink", "i", [ifindex])
    servers = await bus.get_property(RESOLVE1, path, LINK, "DNS")
    domains = await bus.get_property(RESOLVE1, path, LINK, "Domains")
    return DnsConfig(server=[socket.inet_ntop(fam, bytes(raw)) for fam, raw in servers],
                     search=[name for name, routing_only in domains if not routing_only])


def _servers(config: dict[str, Any]) -> list[list[Any]]:
    addresses = [ipaddress.ip_address(ip) for ip in config["server"]]
    return [[socket.AF_INET if a.version == 4 else socket.AF_INET6, a.packed] for a in addresses]


async def run(bus: dbus.Client, sock: nl.Netlink, changes: list[Change], undo: UndoLog) -> None:
    from .apply import _forget, inverse

    for change in changes:
        p = change.payload
        index = sock.indexes([p["ifname"]]).get(p["ifname"])
        if index is None:
            raise InvalidInput(f"{change.summary()}: interface {p['ifname']!r} does not exist")
        entry = inverse(change)
        if entry is not None:
            undo.record(entry)
        try:
            await bus.call(RESOLVE1, RESOLVE1_PATH, MANAGER, "SetLinkDNS", "ia(iay)", [index, _servers(p)])
        except BaseException:
            _forget(undo, entry)  # nothing took effect
            raise
        # From here the servers are set: the undo entry stays, and restores the domains too.
        await bus.call(RESOLVE1, RESOLVE1_PATH, MANAGER, "SetLinkDomains", "ia(sb)",
                       [index, [[name, False] for name in p["search"]]])
