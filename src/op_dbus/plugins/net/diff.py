"""The pure diff of the `net` section: ordered changes, each carrying the operation and its inverse.

Order (so that every step can succeed): remove routes, remove addresses, create kernel links
(bridges and bonds before the links enslaved to them, lower devices before vxlan/macvlan/vlan),
set link properties and membership, then every OVS change (applied as one transaction), then the
properties of OVS internal devices, DHCP, added addresses, added routes (gateways last), and
finally deleted kernel links.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from op_dbus.errors import InvalidInput
from op_dbus.plugin import Change

from .model import (
    KERNEL_KINDS,
    OVS_TYPES,
    BridgeOptions,
    BridgePort,
    Interface,
    IPConfig,
    NetSection,
    PortVlan,
    Route,
    RouteRule,
    StpOptions,
)

PLUGIN = "net"
MAIN_TABLE = 254
# The metric the kernel gives a route that asks for none.
DEFAULT_METRIC = {4: 0, 6: 1024}
# Kinds that other links are enslaved to or stacked on are created first.
_CREATE_RANK = {"linux-bridge": 0, "bond": 0, "dummy": 1, "veth": 1, "vxlan": 2, "macvlan": 2, "vlan": 2}


def family_of(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def is_link_local(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    return a.version == 6 and a.is_link_local


def route_key(r: Route) -> tuple[str, int, int]:
    """The kernel's identity of a route: destination, table, metric."""
    assert r.destination is not None  # only an absent entry leaves it out, and is matched by `_matches`
    fam = 6 if ":" in r.destination else 4  # canonical already: no second parse
    metric = r.metric if r.metric is not None else DEFAULT_METRIC[fam]
    return r.destination, r.table or MAIN_TABLE, metric


def route_op(r: Route, add: bool, target: dict[str, Any]) -> dict[str, Any]:
    _dst, table, metric = route_key(r)
    op = {"op": "route", "add": add, "dst": r.destination, "gateway": r.next_hop, "oif": r.interface,
          "metric": metric, "table": table, **target}
    if r.route_type:
        op["type"] = r.route_type
    if r.source:
        op["source"] = r.source
    if r.metrics():
        op["metrics"] = r.metrics()
    return op


def _matches(absent: Route, r: Route) -> bool:
    """nmstate's absent entry: it matches a route on every key it gives, and on no other."""
    return ((absent.destination is None or absent.destination == r.destination)
            and (absent.next_hop is None or absent.next_hop == r.next_hop)
            and (absent.interface is None or absent.interface == r.interface)
            and (absent.metric is None or absent.metric == route_key(r)[2])
            and (absent.table is None or absent.table == (r.table or MAIN_TABLE))
            and (absent.route_type is None or absent.route_type == r.route_type)
            and (absent.source is None or absent.source == r.source))


def route_json(r: Route) -> dict[str, Any]:
    return r.model_dump(mode="json", by_alias=True, exclude_none=True)


def _route_name(r: Route) -> str:
    _dst, table, metric = route_key(r)
    via = f" via {r.next_hop}" if r.next_hop else ""
    if r.route_type:
        via = f" {r.route_type}"
    if r.source:
        via += f" src {r.source}"
    dev = f" dev {r.interface}" if r.interface else ""
    extra = f" table {table}" if table != MAIN_TABLE else ""
    return f"route {r.destination}{via}{dev} metric {metric}{extra}"


def _default_route(family: int, gw: str, iface: str) -> Route:
    return Route(destination="0.0.0.0/0" if family == 4 else "::/0", next_hop=gw, interface=iface)


class _Plan:
    """Changes collected per phase, concatenated in phase order at the end."""

    PHASES = ("rule_del", "route_del", "addr_del", "link_add", "link_set", "ovs", "ovs_link_set", "dhcp", "addr_add",
              "route_add", "gateway_add", "rule_add", "dns", "link_del")

    def __init__(self, target: dict[str, Any]) -> None:
        self.target = target
        self.phases: dict[str, list[Change]] = {p: [] for p in self.PHASES}
        self.deleted_routes: set[tuple[str, int, int]] = set()

    def add(self, phase: str, obj: str, action: str, op: dict[str, Any], undo: dict[str, Any] | None,
            before: Any = None, after: Any = None) -> None:
        payload = {**op, **self.target}
        if undo is not None:
            payload["undo"] = {**undo, **self.target}
        self.phases[phase].append(Change(PLUGIN, obj, action, before=before, after=after, payload=payload))

    def remove_route(self, r: Route) -> None:
        key = route_key(r)
        if key in self.deleted_routes:
            return
        self.deleted_routes.add(key)
        self.add("route_del", _route_name(r), "remove-route", route_op(r, False, {}), route_op(r, True, {}),
                 before=route_json(r))

    def changes(self) -> list[Change]:
        # Stable: links of one rank keep the order of the file.
        self.phases["link_add"].sort(key=lambda ch: _CREATE_RANK.get(ch.payload.get("type", ""), 9))
        return [c for p in self.PHASES for c in self.phases[p]]


def _addresses(ip: IPConfig | None) -> set[tuple[str, int]]:
    if ip is None or ip.address is None:
        return set()
    return {(a.ip, a.prefix) for a in ip.address if not is_link_local(a.ip)}


def _current_routes(current: NetSection) -> list[Route]:
    """Every route of the current state, gateways included, as Route objects."""
    out = list(current.routes or [])
    for iface in current.interfaces:
        for fam, ip in ((4, iface.ipv4), (6, iface.ipv6)):
            if ip is not None and ip.gateway:
                out.append(_default_route(fam, ip.gateway, iface.name))
    return out


class _RouteIndex:
    """The current routes keyed by the kernel's identity and by interface, so every lookup is a dict probe."""

    def __init__(self, routes: list[Route]) -> None:
        self.by_key: dict[tuple[str, int, int], list[Route]] = {}
        self.by_interface: dict[str | None, list[Route]] = {}
        for r in routes:
            self.by_key.setdefault(route_key(r), []).append(r)
            self.by_interface.setdefault(r.interface, []).append(r)

    def same_key(self, key: tuple[str, int, int]) -> list[Route]:
        return self.by_key.get(key, [])

    def via(self, interface: str) -> list[Route]:
        return self.by_interface.get(interface, [])

    def matching(self, absent: Route) -> list[Route]:
        """The routes an absent entry removes; a destination or an interface narrows the search to a dict probe."""
        if absent.destination is not None:
            candidates = [r for (dst, _t, _m), rs in self.by_key.items() if dst == absent.destination for r in rs] \
                if absent.table is None or absent.metric is None else self.same_key(route_key(absent))
        elif absent.interface is not None:
            candidates = self.via(absent.interface)
        else:
            candidates = [r for rs in self.by_key.values() for r in rs]
        return [r for r in candidates if _matches(absent, r)]


def _master_of(current: NetSection, name: str) -> str | None:
    for iface in current.interfaces:
        if iface.type in ("linux-bridge", "bond") and name in (iface.ports or []):
            return iface.name
    return None


def _ovs_bridge_of(current: NetSection, name: str) -> str | None:
    for iface in current.interfaces:
        if iface.type == "ovs-bridge" and name in (iface.ports or []):
            return iface.name
    return None


def _port_spec(name: str, c: Interface | None) -> dict[str, Any]:
    """How to re-create a port as it is now: an internal port keeps its MTU (OVS derives the bridge's from it)."""
    internal = c is not None and c.type == "ovs-interface"
    spec: dict[str, Any] = {"name": name, "internal": internal}
    if internal and c is not None and c.mtu:
        spec["mtu"] = c.mtu
    if internal and c is not None and c.state == "up":
        spec["up"] = True
    return spec


def _link_add_op(iface: Interface, kind_type: str, *, up: bool, master: str | None) -> dict[str, Any]:
    op: dict[str, Any] = {"op": "link_add", "ifname": iface.name, "type": kind_type, "mtu": iface.mtu,
                          "mac": iface.mac_address, "up": up, "master": master}
    for key in ("veth", "vxlan", "macvlan", "vlan", "bond"):
        sub = getattr(iface, key)
        if sub is not None:
            op[key] = sub.model_dump(mode="json", by_alias=True, exclude_none=True)
    return op


def diff(desired: NetSection, current: NetSection) -> list[Change]:
    target = {"netns": desired.netns, "ovsdb": desired.ovsdb}
    plan = _Plan(target)
    # A current entry marked absent (a scoped query's record of a declared interface that does not exist) is no interface.
    cur = {i.name: i for i in current.interfaces if i.state != "absent"}
    des = {i.name: i for i in desired.interfaces}
    cur_routes = _RouteIndex(_current_routes(current))
    created_veth_peers: set[str] = set()

    # Ports an OVS bridge of the desired state will carry as internal ports.
    def is_internal(port: str) -> bool:
        d = des.get(port)
        if d is not None and d.type == "ovs-interface":
            return True
        c = cur.get(port)
        return c is not None and c.type == "ovs-interface"

    def type_of(d: Interface) -> str | None:
        return d.type or (cur[d.name].type if d.name in cur else None)

    desired_ovs_ports = {p for d in desired.interfaces
                         if type_of(d) == "ovs-bridge" and d.state != "absent" for p in d.ports or []}

    for d in desired.interfaces:
        c = cur.get(d.name)
        if d.state == "absent":
            if c is not None:
                _remove_interface(plan, c, current, cur_routes, des)
            continue
        itype = (c.type if c is not None and (d.type is None or d.type == "ethernet") else None) or d.type
        # nmstate 1.x reports a veth as `ethernet`: that spelling names an existing veth too.
        if c is not None and d.type is not None and c.type != d.type and not (d.type == "ethernet" and c.type == "veth"):
            raise InvalidInput(f"interface {d.name!r} exists as type {c.type!r}, not {d.type!r}; "
                               "declare it with state: absent first to replace it")
        if c is None:
            if itype is None:
                raise InvalidInput(f"interface {d.name!r} does not exist and has no `type` to create it with")
            if itype == "ovs-bridge":
                ports = [{"name": p, "internal": is_internal(p)} for p in d.ports or []]
                plan.add("ovs", f"interface {d.name}", "create",
                         {"op": "ovs_bridge_add", "name": d.name, "datapath_type": d.datapath_type, "ports": ports},
                         {"op": "ovs_bridge_del", "name": d.name}, after=_iface_json(d))
            elif itype == "ovs-interface":
                if d.name not in desired_ovs_ports:
                    raise InvalidInput(f"ovs-interface {d.name!r} must be listed in the `ports` of an ovs-bridge")
            elif itype in KERNEL_KINDS:
                if itype == "veth" and d.name in created_veth_peers:
                    pass  # made together with its peer
                else:
                    if itype == "veth":
                        if d.veth is None:
                            raise InvalidInput(f"veth {d.name!r} needs `veth: {{peer: NAME}}`")
                        created_veth_peers.add(d.veth.peer)
                    if itype == "vxlan" and d.vxlan is None:
                        raise InvalidInput(f"vxlan {d.name!r} needs `vxlan: {{id: VNI, ...}}`")
                    if itype == "macvlan" and d.macvlan is None:
                        raise InvalidInput(f"macvlan {d.name!r} needs `macvlan: {{base-iface: NAME}}`")
                    if itype == "vlan" and d.vlan is None:
                        raise InvalidInput(f"vlan {d.name!r} needs `vlan: {{base-iface: NAME, id: N}}`")
                    op = _link_add_op(d, itype, up=False, master=None)
                    plan.add("link_add", f"interface {d.name}", "create", op, {"op": "link_del", "ifname": d.name},
                             after=_iface_json(d))
            else:
                raise InvalidInput(f"interface {d.name!r} does not exist, and type {itype!r} cannot be created "
                                   "(only virtual interfaces can)")
        _update_interface(plan, d, c, itype or "unknown", cur, des, is_internal,
                          made_as_peer=c is None and d.name in created_veth_peers, cur_routes=cur_routes)
        _update_addresses(plan, d, c, cur_routes)

    _update_routes(plan, desired, cur_routes)
    _update_rules(plan, desired.route_rules or [], current.route_rules or [])
    _update_dns(plan, desired, current)
    return plan.changes()


def _update_dns(plan: _Plan, desired: NetSection, current: NetSection) -> None:
    """nmstate's dns-resolver.config, given, is the complete list of servers and of search domains."""
    from .dns import carrier

    want = desired.dns_resolver
    if want is None:
        return
    name = carrier(desired)
    if name is None:
        raise InvalidInput("dns-resolver: op-dbus sets DNS on a link through systemd-resolved; list an interface with "
                           "static addresses in this file to carry it")
    have = current.dns_resolver
    if have is not None and have.server == want.server and have.search == want.search:
        return
    old = have.model_dump(mode="json") if have is not None else {"server": [], "search": []}
    new = want.model_dump(mode="json")
    plan.add("dns", f"dns on {name}", "set", {"op": "dns", "ifname": name, **new}, {"op": "dns", "ifname": name, **old},
             before=old, after=new)


_FULL_MASK = 0xFFFFFFFF


def _rule_id(r: RouteRule) -> tuple[Any, ...]:
    """What makes two rules the same rule, priority aside (the kernel fills in a mask for a mark given without one)."""
    mask = (r.fwmask if r.fwmask is not None else _FULL_MASK) if r.fwmark is not None else None
    table = (r.route_table or MAIN_TABLE) if r.action is None else None
    return r.version(), r.ip_from, r.ip_to, r.fwmark, mask, r.iif, r.action, table


def _rule_given_matches(absent: RouteRule, r: RouteRule) -> bool:
    """An absent rule matches on every key it gives (as nmstate's does)."""
    for key in ("ip_from", "ip_to", "priority", "fwmark", "fwmask", "iif", "action", "route_table"):
        want = getattr(absent, key)
        if want is not None and getattr(r, key) != want:
            return False
    return (absent.family is None and (absent.ip_from or absent.ip_to) is None) or absent.version() == r.version()


def rule_op(r: RouteRule, add: bool) -> dict[str, Any]:
    src, _, src_len = (r.ip_from or "").partition("/")
    dst, _, dst_len = (r.ip_to or "").partition("/")
    return {"op": "rule", "add": add, "family": r.version(), "src": src or None, "src_len": int(src_len or 0),
            "dst": dst or None, "dst_len": int(dst_len or 0), "priority": r.priority, "fwmark": r.fwmark,
            "fwmask": r.fwmask, "iif": r.iif, "action": r.action,
            "table": (r.route_table or MAIN_TABLE) if r.action is None else None}


def _rule_name(r: RouteRule) -> str:
    parts = [f"from {r.ip_from or 'all'}"]
    if r.ip_to:
        parts.append(f"to {r.ip_to}")
    if r.fwmark is not None:
        parts.append(f"fwmark {r.fwmark:#x}" + (f"/{r.fwmask:#x}" if r.fwmask is not None else ""))
    if r.iif:
        parts.append(f"iif {r.iif}")
    parts.append(r.action or f"lookup {r.route_table or MAIN_TABLE}")
    if r.priority is not None:
        parts.append(f"priority {r.priority}")
    return f"rule ipv{r.version()} " + " ".join(parts)


def _update_rules(plan: _Plan, desired: list[RouteRule], current: list[RouteRule]) -> None:
    """nmstate's route-rules: listed rules are added when missing; an absent entry removes what it matches."""
    by_id: dict[tuple[Any, ...], list[RouteRule]] = {}
    for r in current:
        by_id.setdefault(_rule_id(r), []).append(r)
    removed: set[int] = set()
    for r in desired:
        if r.state == "absent":
            for c in current:
                if id(c) not in removed and _rule_given_matches(r, c):
                    removed.add(id(c))
                    plan.add("rule_del", _rule_name(c), "remove-rule", rule_op(c, False), rule_op(c, True),
                             before=c.model_dump(mode="json", by_alias=True, exclude_none=True))
            continue
        same = [c for c in by_id.get(_rule_id(r), [])
                if id(c) not in removed and (r.priority is None or c.priority == r.priority)]
        if same:
            continue
        plan.add("rule_add", _rule_name(r), "add-rule", rule_op(r, True), rule_op(r, False),
                 after=r.model_dump(mode="json", by_alias=True, exclude_none=True))


def _iface_json(i: Interface) -> dict[str, Any]:
    return i.model_dump(mode="json", by_alias=True, exclude_none=True)


def _remove_interface(plan: _Plan, c: Interface, current: NetSection, cur_routes: _RouteIndex,
                      des: dict[str, Interface]) -> None:
    """Delete `c`, first taking off (with their inverses) what its deletion would silently drop."""
    _drop_l3(plan, c, cur_routes)
    before = _iface_json(c)
    if c.type == "ovs-bridge":
        by_name = {i.name: i for i in current.interfaces}
        ports = [_port_spec(p, by_name.get(p)) for p in c.ports or []]
        # Its internal ports go with it, and so do their addresses and routes.
        for p in c.ports or []:
            port = by_name.get(p)
            if port is not None and port.type == "ovs-interface" and p not in des:
                _drop_l3(plan, port, cur_routes)
        plan.add("ovs", f"interface {c.name}", "remove", {"op": "ovs_bridge_del", "name": c.name},
                 {"op": "ovs_bridge_add", "name": c.name, "datapath_type": c.datapath_type, "ports": ports,
                  "up": c.state == "up"}, before=before)
        return
    bridge = _ovs_bridge_of(current, c.name)
    desired_bridge = des.get(bridge) if bridge else None
    # A port the desired bridge no longer lists is removed by the bridge's own diff.
    if bridge and (desired_bridge is None or desired_bridge.ports is None or c.name in desired_bridge.ports):
        plan.add("ovs", f"port {c.name} of {bridge}", "remove-port",
                 {"op": "ovs_port_del", "bridge": bridge, "name": c.name},
                 {"op": "ovs_port_add", "bridge": bridge, **_port_spec(c.name, c)})
    if c.type == "ovs-interface":
        return
    if c.type not in KERNEL_KINDS:
        raise InvalidInput(f"interface {c.name!r} of type {c.type!r} cannot be removed (only virtual interfaces can); "
                           "use state: down")
    for member in c.ports or []:
        plan.add("link_set", f"interface {member}", "set", {"op": "link_set", "ifname": member, "master": ""},
                 {"op": "link_set", "ifname": member, "master": c.name},
                 before={"controller": c.name}, after={"controller": None})
    peer = c.veth.peer if c.type == "veth" and c.veth is not None else None
    if peer is not None and peer in des and des[peer].state == "absent" and c.name > peer:
        return  # deleting one end deletes the pair; the other entry does it
    up = c.state == "up"
    master = _master_of(current, c.name)
    undo = _link_add_op(c, c.type, up=up, master=master)
    plan.add("link_del", f"interface {c.name}", "remove", {"op": "link_del", "ifname": c.name}, undo, before=before)


def _drop_l3(plan: _Plan, c: Interface, cur_routes: _RouteIndex) -> None:
    """Remove the routes via `c` and its addresses, each with its inverse."""
    for r in cur_routes.via(c.name):
        plan.remove_route(r)
    for fam, ip in ((4, c.ipv4), (6, c.ipv6)):
        for addr, prefix in sorted(_addresses(ip)):
            plan.add("addr_del", f"address {addr}/{prefix} on {c.name}", "remove-address",
                     {"op": "addr", "add": False, "ifname": c.name, "ip": addr, "prefix": prefix},
                     {"op": "addr", "add": True, "ifname": c.name, "ip": addr, "prefix": prefix},
                     before={"ip": addr, "prefix": prefix, "family": fam})


def _update_interface(plan: _Plan, d: Interface, c: Interface | None, itype: str, cur: dict[str, Interface],
                      des: dict[str, Interface], is_internal: Any, made_as_peer: bool = False,
                      cur_routes: _RouteIndex | None = None) -> None:
    name = d.name
    # OVS devices and the second end of a veth pair exist only after their creator ran: set them afterwards.
    ovs = itype in OVS_TYPES or made_as_peer
    want_up = (d.state or "up") == "up" if c is None or d.state is not None else None
    fields: dict[str, Any] = {}
    old: dict[str, Any] = {}
    if d.mtu is not None and ((c is None and ovs) or (c is not None and c.mtu != d.mtu)):
        if itype in OVS_TYPES:
            plan.add("ovs", f"interface {name}", "set", {"op": "ovs_mtu", "name": name, "mtu": d.mtu},
                     {"op": "ovs_mtu", "name": name, "mtu": c.mtu if c else None},
                     before={"mtu": c.mtu if c else None}, after={"mtu": d.mtu})
        else:
            fields["mtu"], old["mtu"] = d.mtu, c.mtu if c else None
    if d.mac_address is not None and ((c is None and ovs) or (c is not None and c.mac_address != d.mac_address)):
        fields["mac"], old["mac"] = d.mac_address, c.mac_address if c else None
    if want_up is not None and (c is None or (c.state == "up") != want_up):
        fields["up"], old["up"] = want_up, (c.state == "up") if c else None
    if fields:
        undo = {k: v for k, v in old.items() if v is not None}
        plan.add("ovs_link_set" if itype in OVS_TYPES else "link_set", f"interface {name}", "set",
                 {"op": "link_set", "ifname": name, **fields},
                 {"op": "link_set", "ifname": name, **undo} if undo and c is not None else None,
                 before=_fields_json(old) if c else None, after=_fields_json(fields))

    if itype == "ovs-bridge" and c is not None and d.datapath_type and d.datapath_type != c.datapath_type:
        plan.add("ovs", f"interface {name}", "set", {"op": "ovs_bridge_set", "name": name, "datapath_type": d.datapath_type},
                 {"op": "ovs_bridge_set", "name": name, "datapath_type": c.datapath_type or "system"},
                 before={"datapath-type": c.datapath_type}, after={"datapath-type": d.datapath_type})
    if d.ports is None:
        if itype == "linux-bridge" and d.bridge is not None:
            _update_bridge(plan, d, c)
        if itype == "ovs-bridge":
            _update_ovs_bridge(plan, d, c)
        return
    have = set(c.ports or []) if c else set()
    want = set(d.ports)
    if itype == "ovs-bridge":
        if c is None:
            _update_ovs_bridge(plan, d, c)
            return  # created with its ports
        for p in sorted(want - have):
            plan.add("ovs", f"port {p} of {name}", "add-port",
                     {"op": "ovs_port_add", "bridge": name, "name": p, "internal": is_internal(p)},
                     {"op": "ovs_port_del", "bridge": name, "name": p})
        for p in sorted(have - want):
            gone = cur.get(p)
            if gone is not None and gone.type == "ovs-interface" and p not in des:
                _drop_l3(plan, gone, cur_routes or _RouteIndex([]))  # the internal device goes with its port
            plan.add("ovs", f"port {p} of {name}", "remove-port", {"op": "ovs_port_del", "bridge": name, "name": p},
                     {"op": "ovs_port_add", "bridge": name, **_port_spec(p, cur.get(p))})
        _update_ovs_bridge(plan, d, c)
    elif itype in ("linux-bridge", "bond"):
        masters = {p: i.name for i in cur.values() if i.type in ("linux-bridge", "bond") for p in i.ports or []}
        for p in sorted(want - have):
            prev = masters.get(p, "")
            plan.add("link_set", f"interface {p}", "set", {"op": "link_set", "ifname": p, "master": name},
                     {"op": "link_set", "ifname": p, "master": prev}, before={"controller": prev or None},
                     after={"controller": name})
        for p in sorted(have - want):
            if p in des and des[p].state == "absent":
                continue
            plan.add("link_set", f"interface {p}", "set", {"op": "link_set", "ifname": p, "master": ""},
                     {"op": "link_set", "ifname": p, "master": name},
                     before={"controller": name}, after={"controller": None})
        if itype == "linux-bridge" and d.bridge is not None:
            _update_bridge(plan, d, c)
    else:
        raise InvalidInput(f"interface {name!r} of type {itype!r} cannot have ports")


def bridge_knobs(o: BridgeOptions | None) -> dict[str, int]:
    """A linux-bridge's options as the kernel's IFLA_BR_* values; STP timers only count while STP is on (as in nmstate)."""
    out: dict[str, int] = {}
    if o is None:
        return out
    if isinstance(o.stp, StpOptions):
        if o.stp.enabled is not None:
            out["stp_state"] = int(o.stp.enabled)
        if o.stp.enabled is not False:
            for key, value in (("forward_delay", o.stp.forward_delay), ("hello_time", o.stp.hello_time),
                               ("max_age", o.stp.max_age)):
                if value is not None:
                    out[key] = value * 100
            if o.stp.priority is not None:
                out["priority"] = o.stp.priority
    if o.mac_ageing_time is not None:
        out["ageing_time"] = o.mac_ageing_time * 100
    if o.multicast_snooping is not None:
        out["mcast_snooping"] = int(o.multicast_snooping)
    if o.group_forward_mask is not None:
        out["group_fwd_mask"] = o.group_forward_mask
    return out


# What the kernel gives a new bridge port (its path cost follows the link speed, so it has no fixed default).
_PORT_DEFAULTS = {"priority": 32, "mode": 0}


def port_knobs(p: BridgePort | None) -> dict[str, int]:
    out: dict[str, int] = {}
    if p is not None:
        for key, value in (("mode", p.stp_hairpin_mode), ("cost", p.stp_path_cost), ("priority", p.stp_priority)):
            if value is not None:
                out[key] = int(value)
    return out


def _update_bridge(plan: _Plan, d: Interface, c: Interface | None) -> None:
    """linux-bridge options and its ports' STP settings: only what the file gives, and only what differs."""
    name = d.name
    have = bridge_knobs(c.bridge.options if c is not None and c.bridge is not None else None)
    want = {k: v for k, v in bridge_knobs(d.bridge.options if d.bridge else None).items() if have.get(k) != v}
    if want:
        old = {k: have[k] for k in want if k in have}
        plan.add("link_set", f"interface {name}", "set", {"op": "bridge_set", "ifname": name, "options": want},
                 {"op": "bridge_set", "ifname": name, "options": old} if c is not None and old else None,
                 before=old or None, after=want)
    cur_ports = {p.name: p for p in (c.bridge.port or [])} if c is not None and c.bridge is not None else {}
    for port in (d.bridge.port or []) if d.bridge else []:
        current = port_knobs(cur_ports.get(port.name))
        change = {k: v for k, v in port_knobs(port).items() if current.get(k) != v}
        if not change:
            continue
        known = {k: current.get(k, _PORT_DEFAULTS.get(k)) for k in change}
        old = {k: v for k, v in known.items() if v is not None}
        plan.add("link_set", f"bridge port {port.name} of {name}", "set",
                 {"op": "bridge_port_set", "ifname": port.name, "options": change},
                 {"op": "bridge_port_set", "ifname": port.name, "options": old} if old else None,
                 before=old or None, after=change)


def ovs_bridge_row(o: BridgeOptions | None) -> dict[str, Any]:
    """The Bridge columns an ovs-bridge's options set (only those given)."""
    row: dict[str, Any] = {}
    if o is None:
        return row
    if isinstance(o.stp, bool):
        row["stp_enable"] = o.stp
    if o.rstp is not None:
        row["rstp_enable"] = o.rstp
    if o.mcast_snooping_enable is not None:
        row["mcast_snooping_enable"] = o.mcast_snooping_enable
    if o.fail_mode is not None:
        row["fail_mode"] = o.fail_mode
    return row


def ovs_port_row(v: PortVlan | None) -> dict[str, Any]:
    """The Port columns of nmstate's port `vlan` (tag, trunks, vlan_mode); an empty vlan carries every VLAN."""
    if v is None or v.mode is None:
        return {"tag": None, "trunks": [], "vlan_mode": None}
    if v.mode == "access":
        return {"tag": v.tag, "trunks": [], "vlan_mode": "access"}
    trunks: set[int] = set()
    for t in v.trunk_tags or []:
        if t.id is not None:
            trunks.add(t.id)
        if t.id_range is not None:
            trunks |= set(range(t.id_range.get("min", 0), t.id_range.get("max", -1) + 1))
    mode = "trunk" if v.tag is None else ("native-untagged" if v.enable_native else "native-tagged")
    return {"tag": v.tag, "trunks": sorted(trunks), "vlan_mode": mode}


def _update_ovs_bridge(plan: _Plan, d: Interface, c: Interface | None) -> None:
    """ovs-bridge options and its ports' VLANs: only what the file gives, and only what differs."""
    if d.bridge is None:
        return
    name = d.name
    have = ovs_bridge_row(c.bridge.options if c is not None and c.bridge is not None else None)
    want = {k: v for k, v in ovs_bridge_row(d.bridge.options).items() if c is None or have.get(k) != v}
    if want:
        old = {k: have[k] for k in want if k in have}
        plan.add("ovs", f"interface {name}", "set", {"op": "ovs_bridge_options", "name": name, "row": want},
                 {"op": "ovs_bridge_options", "name": name, "row": old} if c is not None and old else None,
                 before=old or None, after=want)
    cur_ports = {p.name: p for p in (c.bridge.port or [])} if c is not None and c.bridge is not None else {}
    for port in d.bridge.port or []:
        if port.vlan is None:
            continue
        now = cur_ports.get(port.name)
        current = ovs_port_row(now.vlan if now is not None else None)
        row = ovs_port_row(port.vlan)
        if row == current:
            continue
        plan.add("ovs", f"port {port.name} of {name}", "set", {"op": "ovs_port_vlan", "name": port.name, "row": row},
                 {"op": "ovs_port_vlan", "name": port.name, "row": current}, before=current, after=row)


def _fields_json(fields: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in fields.items():
        if k == "up":
            out["state"] = None if v is None else ("up" if v else "down")
        elif k == "mac":
            out["mac-address"] = v
        else:
            out[k] = v
    return out


def _update_addresses(plan: _Plan, d: Interface, c: Interface | None, cur_routes: _RouteIndex) -> None:
    for fam, want_cfg, have_cfg in ((4, d.ipv4, c.ipv4 if c else None), (6, d.ipv6, c.ipv6 if c else None)):
        if want_cfg is None:
            continue
        enabled = want_cfg.enabled if want_cfg.enabled is not None else True
        if enabled and want_cfg.dhcp:
            if not (have_cfg is not None and have_cfg.dhcp):
                plan.add("dhcp", f"dhcp{fam} on {d.name}", "start-dhcp",
                         {"op": "dhcp", "start": True, "ifname": d.name, "family": fam},
                         {"op": "dhcp", "start": False, "ifname": d.name, "family": fam}, after={"dhcp": True})
            continue
        have = _addresses(have_cfg)
        if enabled and want_cfg.address is None:
            want = have  # addresses not managed
        else:
            want = _addresses(want_cfg) if enabled else set()
            wrong = [a for a, _p in want if family_of(a) != fam]
            if wrong:
                raise InvalidInput(f"interface {d.name!r}: ipv{fam} lists {', '.join(wrong)} of the other family")
        for addr, prefix in sorted(have - want):
            plan.add("addr_del", f"address {addr}/{prefix} on {d.name}", "remove-address",
                     {"op": "addr", "add": False, "ifname": d.name, "ip": addr, "prefix": prefix},
                     {"op": "addr", "add": True, "ifname": d.name, "ip": addr, "prefix": prefix},
                     before={"ip": addr, "prefix": prefix})
        for addr, prefix in sorted(want - have):
            plan.add("addr_add", f"address {addr}/{prefix} on {d.name}", "add-address",
                     {"op": "addr", "add": True, "ifname": d.name, "ip": addr, "prefix": prefix},
                     {"op": "addr", "add": False, "ifname": d.name, "ip": addr, "prefix": prefix},
                     after={"ip": addr, "prefix": prefix})
        gw = want_cfg.gateway
        if enabled and gw is not None:
            if family_of(gw) != fam:
                raise InvalidInput(f"interface {d.name!r}: ipv{fam} gateway {gw} is of the other family")
            new = _default_route(fam, gw, d.name)
            key = route_key(new)
            clash = cur_routes.same_key(key)
            if any(r.next_hop == gw and r.interface == d.name for r in clash):
                continue
            for r in clash:
                plan.remove_route(r)
            plan.add("gateway_add", _route_name(new), "add-route", route_op(new, True, {}), route_op(new, False, {}),
                     after=route_json(new))


def _update_routes(plan: _Plan, desired: NetSection, cur_routes: _RouteIndex) -> None:
    for r in desired.routes or []:
        if r.state == "absent":
            for c in cur_routes.matching(r):
                plan.remove_route(c)
            continue
        same_key = cur_routes.same_key(route_key(r))
        if r.next_hop is None and r.interface is None and r.route_type is None:
            raise InvalidInput(f"route {r.destination}: give `next-hop` or `interface` (or both), or a `route-type`")
        if any(c.next_hop == r.next_hop and (r.interface is None or c.interface == r.interface)
               and c.route_type == r.route_type and (r.source is None or c.source == r.source)
               and all(c.metrics().get(k) == v for k, v in r.metrics().items()) for c in same_key):
            continue
        for c in same_key:
            plan.remove_route(c)
        plan.add("route_add", _route_name(r), "add-route", route_op(r, True, {}), route_op(r, False, {}),
                 after=route_json(r))
