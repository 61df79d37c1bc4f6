"""The `net` plugin: interfaces, OVS bridges, addresses and routes, over rtnetlink and OVSDB.

The section follows nmstate's schema::

    "net": {
      "interfaces": [
        {"name": "br0", "type": "ovs-bridge", "ports": ["ens1", "vm0"], "datapath-type": "netdev",
         "ipv4": {"enabled": true, "dhcp": false, "address": [{"ip": "10.0.1.10", "prefix": 24}],
                  "gateway": "10.0.1.1"}},
        {"name": "vm0", "type": "ovs-interface", "mtu": 9000},
        {"name": "v0", "type": "veth", "veth": {"peer": "v0p", "peer-netns": "ns1"}, "state": "up"},
        {"name": "lb0", "type": "linux-bridge", "ports": ["v1"]},
        {"name": "vx0", "type": "vxlan", "vxlan": {"id": 42, "remote": "198.18.0.2", "destination-port": 4789}},
        {"name": "mv0", "type": "macvlan", "macvlan": {"base-iface": "v1", "mode": "bridge"}},
        {"name": "old0", "state": "absent"}
      ],
      "routes": [{"destination": "198.19.0.0/24", "next-hop": "10.0.1.254", "interface": "br0",
                  "metric": 100, "table": 254},
                 {"destination": "198.20.0.0/24", "state": "absent"}],
      "netns": "ns1",                                  # optional: act inside /run/netns/ns1
      "ovsdb": "/var/run/openvswitch/db.sock"          # optional: the ovsdb-server socket
    }

Semantics:
- Only the named interfaces are managed. `state` is up, down or absent; when it is left out an
  existing interface keeps its state and a new one is brought up.
- `ipv4`/`ipv6`.`address`, when given, is the complete set of that family's addresses on the
  interface (IPv6 link-local addresses are never listed nor removed); `enabled: false` removes them
  all. `gateway` makes the default route of that family via this interface, replacing a default
  route with the same metric (0 for IPv4, 1024 for IPv6) elsewhere.
- `dhcp: true` hands the interface to a DHCP client found on the system (dhclient, then udhcpc);
  with none installed, `check` reports it and nothing is applied.
- `ports` is the complete member list of an ovs-bridge, linux-bridge or bond. A port named by an
  `ovs-interface` entry becomes an internal port; any other port is an existing device. An
  ovs-bridge's own internal device (same name) carries the bridge's addresses.
  `check` refuses a port that neither exists (as a device or an OVS port) nor is created by the
  document, before anything changes.
- `datapath-type` of an ovs-bridge: when left out, a new bridge gets `system` if the kernel has the
  OVS datapath (the `ovs_datapath` generic netlink family), else `netdev` (userspace datapath, which
  needs no kernel module); an existing bridge keeps its own. ovs-vswitchd must run in the same
  network namespace as the one targeted (`netns`).
- `routes` entries are identified by (destination, table, metric), as in the kernel; an entry with
  `state: absent` removes the matching routes. Routes the kernel makes itself (proto kernel, the
  local table) are not shown.
- vlan, bond and dummy are supported where the kernel has them; `check` probes the kernel in a
  private namespace and reports a missing type before anything changes.

nmstate's own layout is read too (see `nmstate.py`): `bridge: {options, port: [...]}`, `mac-vlan`,
`link-aggregation`, the OVS bridge's same-named `ovs-interface` entry, `routes: {config: [...]}`,
`route-rules`, `prefix-length`, `next-hop-address`, `next-hop-interface`, `table-id`; a key nmstate
defines that op-dbus does not implement is refused by name. `veth.peer-netns`, `datapath-type` and
`netns`/`ovsdb` are op-dbus additions; `ipv6.enabled: false` removes addresses but does not set the
`disable_ipv6` sysctl; `dhcp` for IPv6 is not managed; the query reports `dhcp: true` for IPv4 when an
address has a finite lifetime.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from op_dbus.backends import dbus, dhcp
from op_dbus.backends import netlink as nl
from op_dbus.backends.ovsdb import DEFAULT_SOCKET, Ovsdb
from op_dbus.errors import InvalidInput, Problem, ServiceUnavailable
from op_dbus.plugin import Change, Context, Plugin, UndoLog, WatchEvent

from . import apply as applier
from . import dns
from .diff import diff as compute_diff
from .model import KERNEL_KINDS, OVS_TYPES, Interface, NetSection
from .query import build_state, read_ovs, route_rules

__all__ = ["NetPlugin", "NetSection"]

# Kernel feature probes are process-wide facts: kind -> (supported, what the probe found).
_KIND_SUPPORT: dict[str, tuple[bool, str]] = {}


def probe_kind(kind: str) -> tuple[bool, str]:
    """Whether the kernel has `kind` links, and what the probe found, in words fit for a report.

    The probe creates such a link in a private, throwaway namespace. Every outcome is remembered, an inconclusive one
    too, so all callers in a process see the same answer and the same words.
    """
    if kind not in _KIND_SUPPORT:
        _KIND_SUPPORT[kind] = _probe_kind(kind)
    return _KIND_SUPPORT[kind]


def _probe_kind(kind: str) -> tuple[bool, str]:
    try:
        sock = nl.socket_in_private_netns()
    except OSError as exc:
        # Without a namespace to probe in, assume support: apply then reports the kernel's own refusal.
        return True, f"not probed: no private network namespace for the probe ({exc.strerror or exc})"
    with nl.Netlink(sock=sock) as probe:
        reply = probe.batch([nl.link_add("opdbusprobe0", kind)])[0]
    if reply.error == errno.EOPNOTSUPP:
        return False, f"the kernel refused a {kind!r} link: {reply.describe()}"
    if reply.error:
        return True, f"probe inconclusive: creating a {kind!r} link failed with {reply.describe()}"
    return True, f"the kernel created a {kind!r} link"


class NetPlugin(Plugin[NetSection]):
    name: ClassVar[str] = "net"
    model: ClassVar[type[NetSection]] = NetSection
    order: ClassVar[int] = 10

    def claims(self, desired: NetSection) -> dict[str, str]:
        # Only the host's own namespace: NetworkManager does not manage devices of other network namespaces.
        return {f"interface {d.name}": f"plugins.net.interfaces[{i}]: op-dbus manages {d.name!r} over netlink"
                for i, d in enumerate(desired.interfaces) if d.state != "absent" and not desired.netns}

    # --- connections ---

    @staticmethod
    def _netns(section: NetSection | None, ctx: Context) -> str | None:
        return (section.netns if section is not None else None) or ctx.settings.netns

    @staticmethod
    def _ovsdb_path(section: NetSection | None, ctx: Context) -> str:
        return (section.ovsdb if section is not None else None) or ctx.settings.ovsdb or DEFAULT_SOCKET

    async def _netlink(self, ctx: Context, netns: str | None) -> nl.Netlink:
        async def opener() -> nl.Netlink:
            return nl.Netlink(netns, timeout=ctx.settings.job_timeout)

        return await ctx.resource(f"net.netlink:{netns or ''}", opener, lambda s: s.close())  # type: ignore[no-any-return]

    async def _ovsdb(self, ctx: Context, path: str) -> Ovsdb:
        async def opener() -> Ovsdb:
            return await Ovsdb.connect(path, timeout=ctx.settings.job_timeout)

        return await ctx.resource(f"net.ovsdb:{path}", opener, lambda db: db.close())  # type: ignore[no-any-return]

    # --- the verbs ---

    async def check(self, desired: NetSection, ctx: Context) -> list[Problem]:
        problems: list[Problem] = []
        netns = self._netns(desired, ctx)
        if netns is not None:
            try:
                fd = nl.open_netns(netns)
            except InvalidInput as exc:
                return [Problem("plugins.net.netns", exc.message)]
            os.close(fd)
        needs_ovs = False
        for i, iface in enumerate(desired.interfaces):
            path = f"plugins.net.interfaces[{i}]"
            if iface.type in OVS_TYPES:
                needs_ovs = True
            if iface.state != "absent" and iface.type in KERNEL_KINDS:
                ok, text = probe_kind(KERNEL_KINDS[iface.type])
                if not ok:
                    problems.append(Problem(path, f"interface {iface.name!r}: this kernel does not support interface "
                                                  f"type {iface.type!r} ({text}); nothing was changed"))
            for fam, ip in (("ipv4", iface.ipv4), ("ipv6", iface.ipv6)):
                if ip is not None and ip.dhcp and (ip.enabled is not False) and dhcp.find_client() is None:
                    problems.append(Problem(f"{path}.{fam}.dhcp", f"interface {iface.name!r}: dhcp is requested but no "
                                            f"DHCP client is installed (looked for {', '.join(dhcp.CLIENTS)})"))
        ovs_ports: set[str] = set()
        if needs_ovs:
            db = await self._ovsdb(ctx, self._ovsdb_path(desired, ctx))  # raises ServiceUnavailable with the hint
            ovs_ports = set((await read_ovs(db)).port_uuid)
        problems += await self._missing_ports(desired, ctx, netns, ovs_ports)
        if desired.dns_resolver is not None:
            problems += await self._dns_problems(desired, ctx, netns)
        return problems

    async def _dns_problems(self, desired: NetSection, ctx: Context, netns: str | None) -> list[Problem]:
        path = "plugins.net.dns-resolver"
        if netns is not None:
            return [Problem(path, "systemd-resolved serves the host's own network namespace; dns-resolver cannot be "
                                  f"set for network namespace {netns!r}")]
        if dns.carrier(desired) is None:
            return [Problem(path, "op-dbus sets DNS on a link through systemd-resolved; list an interface with static "
                                  "addresses in this file to carry it (as nmstate does)")]
        try:
            missing = await dns.resolved_missing(await dbus.system_client(ctx))
        except ServiceUnavailable as exc:
            missing = f"{exc.message}; op-dbus sets DNS only through systemd-resolved"
        return [Problem(path, missing)] if missing else []

    async def _missing_ports(self, desired: NetSection, ctx: Context, netns: str | None,
                             ovs_ports: set[str]) -> list[Problem]:
        """Ports and route interfaces that no device, no OVS port and no entry of the file provides.

        They are refused before anything changes; otherwise the kernel or ovs-vswitchd would refuse them halfway
        through an apply, and the steps taken before would have to be rolled back.
        """
        controllers = [(i, d) for i, d in enumerate(desired.interfaces) if d.state != "absent" and d.ports]
        routed = [(i, r) for i, r in enumerate(desired.routes or []) if r.state != "absent" and r.interface]
        if not controllers and not routed:
            return []
        provided = {d.name for d in desired.interfaces if d.state != "absent"}
        provided |= {d.veth.peer for d in desired.interfaces
                     if d.state != "absent" and d.veth is not None and d.veth.peer_netns is None}
        removed = {d.name for d in desired.interfaces if d.state == "absent"}
        provided |= {link.name for link in (await self._netlink(ctx, netns)).links()} | ovs_ports
        provided -= removed
        where = f" in network namespace {netns!r}" if netns else ""
        problems = []
        for i, d in controllers:
            for j, port in enumerate(d.ports or []):
                if port not in provided:
                    problems.append(Problem(f"plugins.net.interfaces[{i}].ports[{j}]",
                                            f"interface {d.name!r}: port {port!r} does not exist{where} and no entry "
                                            "of this file creates it; nothing was changed"))
        for i, r in routed:
            if r.interface not in provided:
                gone = "is removed by this file" if r.interface in removed else \
                    f"does not exist{where} and no entry of this file creates it"
                problems.append(Problem(f"plugins.net.routes[{i}].interface",
                                        f"route {r.destination}: interface {r.interface!r} {gone}; nothing was changed"))
        return problems

    async def query(self, ctx: Context, scope: NetSection | None = None) -> NetSection:
        sock = await self._netlink(ctx, self._netns(scope, ctx))
        links, addrs, routes = sock.links(), sock.addresses(), sock.routes()
        ovs = None
        try:
            ovs = await read_ovs(await self._ovsdb(ctx, self._ovsdb_path(scope, ctx)))
        except ServiceUnavailable:
            if scope is not None and any(i.type in OVS_TYPES for i in scope.interfaces):
                raise
        rules = route_rules(nl.dump_rules(sock)) if scope is None or scope.route_rules is not None else None
        if scope is None:
            state = build_state(links, addrs, routes, ovs)
            state.route_rules = rules or None
            return state
        names = {i.name for i in scope.interfaces}
        if ovs is not None:
            # A bridge's ports are part of it: removing or re-creating it needs to know what they are.
            names |= {p for b in names & ovs.bridges.keys() for p in ovs.bridges[b]["ports"]}
        given = scope.routes or []
        keys = {(r.destination, r.table or 254) for r in given if r.destination is not None}
        # nmstate's absent entries match on the keys they give: any table, or every route via an interface.
        dsts = {r.destination for r in given if r.state == "absent" and r.destination is not None}
        ifaces = {r.interface for r in given if r.state == "absent" and r.interface is not None}
        if any(r.state == "absent" and r.destination is None and r.interface is None for r in given):
            ifaces |= {link.name for link in links}
        state = build_state(links, addrs, routes, ovs, names=names, route_keys=keys, route_ifaces=ifaces,
                            route_dsts=dsts)
        # A declared interface that does not exist is recorded as absent, so that converging back to this
        # state (a rollback, or recovery after a crash) removes what was created since; the target settings
        # travel with it so the record alone says where to converge.
        present = {i.name for i in state.interfaces}
        state.interfaces.extend(Interface(name=i.name, type=i.type, state="absent")
                                for i in scope.interfaces if i.name not in present)
        state.netns, state.ovsdb = scope.netns, scope.ovsdb
        state.route_rules = rules
        if scope.dns_resolver is not None:
            state.dns_resolver = await self._read_dns(scope, ctx, links)
        return state

    async def _read_dns(self, scope: NetSection, ctx: Context, links: list[nl.Link]) -> Any:
        name = dns.carrier(scope)
        index = next((link.index for link in links if link.name == name), None)
        if index is None:
            return None  # the carrier is created by this file: nothing is set yet
        return await dns.read(await dbus.system_client(ctx), index)

    def diff(self, desired: NetSection, current: NetSection) -> list[Change]:
        return compute_diff(desired, current)

    async def watch(self, scope: NetSection, ctx: Context) -> AsyncIterator[WatchEvent]:
        """rtnetlink notifications and an OVSDB monitor for the declared interfaces (see `watch.py`)."""
        from .watch import watch

        async for event in watch(scope, self._netns(scope, ctx), self._ovsdb_path(scope, ctx), ctx.settings.job_timeout,
                                 self.name):
            yield event

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        i = 0
        while i < len(changes):
            key = self._group_key(changes[i])
            j = i + 1
            while j < len(changes) and self._group_key(changes[j]) == key:
                j += 1
            group = changes[i:j]
            backend, netns, ovsdb = key
            netns = netns or ctx.settings.netns
            if backend == "netlink":
                applier.run_netlink(await self._netlink(ctx, netns), group, undo)
            elif backend == "ovs":
                path = ovsdb or ctx.settings.ovsdb or DEFAULT_SOCKET
                bring_up = await applier.run_ovs(await self._ovsdb(ctx, path), group, undo, ctx.settings.job_timeout)
                if bring_up:
                    sock = await self._netlink(ctx, netns)
                    for name, reply in zip(bring_up, sock.batch([nl.link_set(n, up=True) for n in bring_up]), strict=True):
                        if reply.error:
                            raise nl.error_for(reply, f"net: bring up {name}")
            elif backend == "dns":
                await dns.run(await dbus.system_client(ctx), await self._netlink(ctx, netns), group, undo)
            else:
                applier.run_dhcp(group, undo, netns)
            i = j

    @staticmethod
    def _group_key(change: Change) -> tuple[str, Any, Any]:
        return applier.backend_of(change), change.payload.get("netns"), change.payload.get("ovsdb")
