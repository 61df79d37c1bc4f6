"""Turn what the kernel and OVSDB report into the `net` section: one canonical form, so a dump re-applies as a no-op."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from op_dbus.backends import netlink as nl
from op_dbus.backends.ovsdb import Ovsdb, optional, set_values

from .diff import DEFAULT_METRIC, MAIN_TABLE
from .model import (
    Address,
    BondConfig,
    BridgeConfig,
    BridgeOptions,
    BridgePort,
    Interface,
    IPConfig,
    MacvlanConfig,
    NetSection,
    PortVlan,
    Route,
    RouteRule,
    StpOptions,
    TrunkTag,
    VethConfig,
    VlanConfig,
    VxlanConfig,
)

_ROUTE_TYPE_NAMES: dict[int, Any] = {nl.RTN_UNICAST: None, nl.RTN_BLACKHOLE: "blackhole",
                                     nl.RTN_UNREACHABLE: "unreachable", nl.RTN_PROHIBIT: "prohibit"}
_KIND_TO_TYPE = {"veth": "veth", "bridge": "linux-bridge", "vxlan": "vxlan", "macvlan": "macvlan", "vlan": "vlan",
                 "bond": "bond", "dummy": "dummy", "tun": "tun"}


@dataclass
class OvsView:
    """The OVS configuration that matters here: bridges with their ports, and which interfaces are internal."""

    bridges: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {datapath_type, ports, options}
    port_vlan: dict[str, PortVlan] = field(default_factory=dict)  # port name -> its VLAN settings, when it has any
    internal: set[str] = field(default_factory=set)
    # name -> uuid, for building transactions
    bridge_uuid: dict[str, str] = field(default_factory=dict)
    port_uuid: dict[str, str] = field(default_factory=dict)


async def read_ovs(db: Ovsdb) -> OvsView:
    res = await db.transact([
        {"op": "select", "table": "Bridge", "where": [],
         "columns": ["_uuid", "name", "ports", "datapath_type", "stp_enable", "rstp_enable", "mcast_snooping_enable",
                     "fail_mode"]},
        {"op": "select", "table": "Port", "where": [], "columns": ["_uuid", "name", "interfaces", "tag", "trunks",
                                                                   "vlan_mode"]},
        {"op": "select", "table": "Interface", "where": [], "columns": ["_uuid", "name", "type"]},
    ])
    bridges, ports, ifaces = (r["rows"] for r in res)
    view = OvsView()
    port_name = {p["_uuid"][1]: p["name"] for p in ports}
    view.port_uuid = {p["name"]: p["_uuid"][1] for p in ports}
    view.internal = {i["name"] for i in ifaces if i["type"] == "internal"}
    for p in ports:
        vlan = port_vlan(optional(p["tag"]), [int(t) for t in set_values(p["trunks"])], optional(p["vlan_mode"]))
        if vlan is not None:
            view.port_vlan[p["name"]] = vlan
    for b in bridges:
        names = sorted(port_name[u[1]] for u in set_values(b["ports"]) if u[1] in port_name and port_name[u[1]] != b["name"])
        options = BridgeOptions(stp=bool(b["stp_enable"]), rstp=bool(b["rstp_enable"]),
                                mcast_snooping_enable=bool(b["mcast_snooping_enable"]),
                                fail_mode=optional(b["fail_mode"]) or "")
        view.bridges[b["name"]] = {"datapath_type": b["datapath_type"] or "system", "ports": names, "options": options}
        view.bridge_uuid[b["name"]] = b["_uuid"][1]
    return view


def port_vlan(tag: int | None, trunks: list[int], mode: str | None) -> PortVlan | None:
    """OVSDB's tag/trunks/vlan_mode of a port in nmstate's terms (None: the port carries every VLAN untouched)."""
    if tag is None and not trunks:
        return None
    if (mode or ("access" if tag is not None and not trunks else "trunk")) == "access":
        return PortVlan(mode="access", tag=tag)
    return PortVlan(mode="trunk", tag=tag, enable_native=mode == "native-untagged" if tag is not None else None,
                    trunk_tags=[TrunkTag(id=t) for t in sorted(trunks)])


def _type_of(link: nl.Link, ovs: OvsView | None) -> str:
    if ovs is not None:
        if link.name in ovs.bridges:
            return "ovs-bridge"
        if link.name in ovs.internal:
            return "ovs-interface"
    if link.arphrd == nl.ARPHRD_LOOPBACK:
        return "loopback"
    if link.kind is None:
        return "ethernet" if link.arphrd == nl.ARPHRD_ETHER else "unknown"
    return _KIND_TO_TYPE.get(link.kind, "unknown")


def _ipconfig(addrs: list[nl.Addr], gateway: str | None, family: int) -> IPConfig:
    usable = [a for a in addrs if not (family == 6 and ipaddress.ip_address(a.ip).is_link_local)]
    if not usable and gateway is None:
        return IPConfig(enabled=False)
    dhcp = True if family == 4 and any(not a.flags & nl.IFA_F_PERMANENT for a in usable) else None
    return IPConfig(
        enabled=True,
        dhcp=dhcp,
        address=None if dhcp else sorted((Address(ip=a.ip, prefix=a.prefix) for a in usable),
                                         key=lambda a: (ipaddress.ip_address(a.ip), a.prefix)),
        gateway=gateway,
    )


def _route_metrics(m: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = dict(m)
    if "quickack" in out:
        out["quickack"] = bool(out["quickack"])
    return out


# The backend keys its table by plain str; these are exactly RouteRule.action's values.
_RULE_ACTION_NAMES = cast("dict[int, Literal['blackhole', 'unreachable', 'prohibit']]",
                          {v: k for k, v in nl.RULE_ACTIONS.items()})


def route_rules(rules: list[nl.Rule]) -> list[RouteRule]:
    """Policy rules in nmstate's terms, without the kernel's own (local, main, default)."""
    out = []
    for r in rules:
        if r.protocol == nl.RTPROT_KERNEL or (r.action != nl.FR_ACT_TO_TBL and r.action not in _RULE_ACTION_NAMES):
            continue
        fam: Literal["ipv4", "ipv6"] = "ipv4" if r.family == socket.AF_INET else "ipv6"
        out.append(RouteRule(
            family=fam, ip_from=f"{r.src}/{r.src_len}" if r.src else None, ip_to=f"{r.dst}/{r.dst_len}" if r.dst else None,
            priority=r.priority, route_table=r.table if r.action == nl.FR_ACT_TO_TBL else None,
            fwmark=r.fwmark or None, fwmask=r.fwmask if r.fwmark else None, iif=r.iif,
            action=_RULE_ACTION_NAMES.get(r.action)))
    out.sort(key=lambda r: (r.priority or 0, r.family or "", r.ip_from or "", r.ip_to or ""))
    return out


def ovs_bridge_config(ovs: OvsView, name: str) -> BridgeConfig:
    b = ovs.bridges[name]
    return BridgeConfig(options=b["options"], port=[BridgePort(name=p, vlan=ovs.port_vlan.get(p)) for p in b["ports"]])


def _seconds(hundredths: int | None) -> int | None:
    return None if hundredths is None else round(hundredths / 100)


def bridge_options(k: dict[str, int]) -> BridgeOptions:
    """A linux-bridge's IFLA_BR_* values in nmstate's terms (seconds where the kernel counts hundredths)."""
    stp = StpOptions(enabled=bool(k["stp_state"]) if "stp_state" in k else None,
                     forward_delay=_seconds(k.get("forward_delay")), hello_time=_seconds(k.get("hello_time")),
                     max_age=_seconds(k.get("max_age")), priority=k.get("priority"))
    snooping = k.get("mcast_snooping")
    return BridgeOptions(stp=stp, mac_ageing_time=_seconds(k.get("ageing_time")),
                         multicast_snooping=None if snooping is None else bool(snooping),
                         group_forward_mask=k.get("group_fwd_mask"))


def bridge_port(link: nl.Link) -> BridgePort:
    k = link.info.get("bridge_port", {})
    mode = k.get("mode")
    return BridgePort(name=link.name, stp_hairpin_mode=None if mode is None else bool(mode),
                      stp_path_cost=k.get("cost"), stp_priority=k.get("priority"))


def build_state(links: list[nl.Link], addrs: list[nl.Addr], routes: list[nl.Route], ovs: OvsView | None,
                names: set[str] | None = None, route_keys: set[tuple[str, int]] | None = None,
                route_ifaces: set[str] | None = None, route_dsts: set[str] | None = None) -> NetSection:
    """The section for everything (`names` None) or only the named interfaces and the routes that concern them.

    Routes of other interfaces are included when their (destination, table) is in `route_keys`, their
    destination in `route_dsts` (any table) or their interface in `route_ifaces`.
    """
    by_index = {link.index: link for link in links}
    by_family: dict[tuple[int, int], list[nl.Addr]] = {}
    for a in addrs:
        by_family.setdefault((a.index, a.family), []).append(a)

    gateways: dict[tuple[int, int], str] = {}
    route_list: list[Route] = []
    for r in routes:
        if r.table == nl.RT_TABLE_LOCAL or r.protocol == nl.RTPROT_KERNEL or r.type not in _ROUTE_TYPE_NAMES:
            continue
        fam = 4 if r.family == socket.AF_INET else 6
        zero = "0.0.0.0" if fam == 4 else "::"
        dst = f"{r.dst or zero}/{r.dst_len}"
        if fam == 6 and ipaddress.ip_network(dst).is_link_local:
            continue
        oif = by_index[r.oif].name if r.oif in by_index and r.type == nl.RTN_UNICAST else None
        if (r.dst_len == 0 and r.table == MAIN_TABLE and r.gateway and r.oif and r.priority == DEFAULT_METRIC[fam]
                and (r.oif, fam) not in gateways):
            gateways[(r.oif, fam)] = r.gateway
            if names is None or oif in names:
                continue
        route = Route(destination=dst, next_hop=r.gateway, interface=oif, metric=r.priority,
                      table=None if r.table == MAIN_TABLE else r.table, route_type=_ROUTE_TYPE_NAMES[r.type],
                      source=r.prefsrc, **_route_metrics(r.metrics))
        if names is not None and oif not in names and r.dst_len != 0 and (
                route_keys is None or (route.destination, r.table) not in route_keys) and (
                route_dsts is None or route.destination not in route_dsts) and (
                route_ifaces is None or oif not in route_ifaces):
            continue
        route_list.append(route)

    ifaces: list[Interface] = []
    seen: set[str] = set()
    for link in links:
        if names is not None and link.name not in names:
            continue
        seen.add(link.name)
        itype = _type_of(link, ovs)
        data: dict[str, Any] = {
            "name": link.name, "type": itype, "state": "up" if link.up else "down", "mtu": link.mtu,
            "mac_address": link.mac if link.mac and itype != "loopback" else None,
        }
        if itype in ("linux-bridge", "bond"):
            members = sorted((p for p in links if p.master == link.index), key=lambda p: p.name)
            data["ports"] = [p.name for p in members]
            if itype == "linux-bridge" and "bridge" in link.info:
                data["bridge"] = BridgeConfig(options=bridge_options(link.info["bridge"]),
                                              port=[bridge_port(p) for p in members])
        elif itype == "ovs-bridge" and ovs is not None:
            data["ports"] = ovs.bridges[link.name]["ports"]
            data["datapath_type"] = ovs.bridges[link.name]["datapath_type"]
            data["bridge"] = ovs_bridge_config(ovs, link.name)
        if itype == "veth" and link.link_netnsid is None and link.link in by_index:
            data["veth"] = VethConfig(peer=by_index[link.link].name)
        elif itype == "vxlan" and "id" in link.info:
            base = by_index.get(link.info.get("link", 0))
            data["vxlan"] = VxlanConfig(id=link.info["id"], remote=link.info.get("remote"), local=link.info.get("local"),
                                        base_iface=base.name if base else None, destination_port=link.info.get("port"))
        elif itype in ("macvlan", "vlan") and link.link in by_index and link.link_netnsid is None:
            base_name = by_index[link.link].name
            if itype == "macvlan":
                data["macvlan"] = MacvlanConfig(base_iface=base_name, mode=link.info.get("mode", "bridge"),
                                                promiscuous=link.info.get("promiscuous"))
            elif "id" in link.info:
                data["vlan"] = VlanConfig(base_iface=base_name, id=link.info["id"])
        elif itype == "bond" and "mode" in link.info:
            data["bond"] = BondConfig(mode=link.info["mode"])
        data["ipv4"] = _ipconfig(by_family.get((link.index, socket.AF_INET), []), gateways.get((link.index, 4)), 4)
        data["ipv6"] = _ipconfig(by_family.get((link.index, socket.AF_INET6), []), gateways.get((link.index, 6)), 6)
        ifaces.append(Interface.model_validate(data))

    # OVS objects whose kernel device is missing (ovs-vswitchd not running, or not created yet).
    if ovs is not None:
        for name, b in ovs.bridges.items():
            if name not in seen and (names is None or name in names):
                ifaces.append(Interface(name=name, type="ovs-bridge", ports=b["ports"], datapath_type=b["datapath_type"],
                                        bridge=ovs_bridge_config(ovs, name)))
                seen.add(name)
        for name in sorted(ovs.internal):
            if name not in seen and (names is None or name in names):
                ifaces.append(Interface(name=name, type="ovs-interface"))

    ifaces.sort(key=lambda i: i.name)
    route_list.sort(key=lambda r: (r.table or MAIN_TABLE, 6 if ":" in (r.destination or "") else 4, r.destination or "",
                                   r.metric or 0, r.next_hop or "", r.interface or ""))
    return NetSection(interfaces=ifaces, routes=route_list)
