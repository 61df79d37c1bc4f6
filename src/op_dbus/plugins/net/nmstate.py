"""nmstate's own layout in the `net` section: read into op-dbus's model, written back out, and what is not implemented.

An nmstate file for a kind op-dbus supports applies unchanged; a key nmstate defines that op-dbus does
not implement is refused by name, saying so, rather than as an unknown key. Keys nmstate itself only
reports (and ignores when applying) are dropped.
"""

from __future__ import annotations

from typing import Any

# nmstate interface types op-dbus spells differently.
TYPE_ALIASES = {"mac-vlan": "macvlan"}
# nmstate interface types op-dbus does not manage.
UNSUPPORTED_TYPES = {"mac-vtap", "team", "vrf", "infiniband", "hsr", "macsec", "ipsec", "xfrm", "ipvlan", "ovs-patch"}

# Keys nmstate reports in a query and ignores when applying.
_QUERY_ONLY_IFACE = {"permanent-mac-address", "min-mtu", "max-mtu", "profile-name", "description", "wait-ip"}
_QUERY_ONLY_ADDR = {"mptcp-flags", "valid-life-time", "preferred-life-time"}
_QUERY_ONLY_BRIDGE_OPTS = {"gc-timer", "hello-timer"}

# nmstate keys op-dbus does not implement (anything else unknown is an unknown key).
_NOT_IMPLEMENTED_IFACE = {"controller", "copy-mac-from", "mptcp", "ethtool", "lldp", "ethernet", "ovs-db", "patch",
                          "dpdk", "dispatch", "identifier", "pci-address", "mac-vtap", "infiniband", "vrf", "team",
                          "hsr", "macsec", "ipsec", "ipvlan", "xfrm", "802.1x", "ieee-802-1x"}
_NOT_IMPLEMENTED_IP = {"dhcp-client-id", "dhcp-duid", "addr-gen-mode", "token", "dhcp-send-hostname",
                       "dhcp-custom-hostname", "allow-extra-address", "dhcp-send-release"}
# Applied to DHCP-learned settings only; op-dbus's DHCP client applies everything it learns, as nmstate's defaults do.
_AUTO_DEFAULTS: dict[str, Any] = {"auto-dns": True, "auto-gateway": True, "auto-routes": True,
                                  "auto-route-table-id": 0, "auto-route-metric": -1}
_NOT_IMPLEMENTED_ROUTE = {"weight", "onlink", "lock-cwnd", "lock-mtu", "vrf-name"}
_NOT_IMPLEMENTED_BRIDGE_OPTS = {"group-addr", "hash-max", "multicast-last-member-count",
                                "multicast-last-member-interval", "multicast-membership-interval", "multicast-querier",
                                "multicast-querier-interval", "multicast-query-interval",
                                "multicast-query-response-interval", "multicast-query-use-ifaddr", "multicast-router",
                                "multicast-startup-query-count", "multicast-startup-query-interval", "vlan-protocol",
                                "datapath", "vlan-default-pvid", "vlan-filtering", "vlans"}
_NOT_IMPLEMENTED_TOP = {"hostname", "ovs-db", "ovn", "dispatch"}


def not_implemented(path: str, what: str = "") -> str:
    extra = f" ({what})" if what else ""
    return f"{path}: valid nmstate syntax that op-dbus does not implement{extra}"


def from_nmstate(data: dict[str, Any]) -> dict[str, Any]:
    """The section with nmstate's layout translated into op-dbus's; raises ValueError naming every unsupported key."""
    problems: list[str] = []
    out = dict(data)
    for key in sorted(_NOT_IMPLEMENTED_TOP & out.keys()):
        sub = out[key]
        # A query's `running` part is ignored when applying, as nmstate does.
        if isinstance(sub, dict) and set(sub) <= {"running"}:
            del out[key]
        else:
            problems.append(not_implemented(key))
    routes = out.get("routes")
    if isinstance(routes, dict):
        if set(routes) - {"config", "running"}:
            problems.append("routes: expected an array, or an object with `config`")
        routes = routes.get("config", [])
        out["routes"] = routes
    if isinstance(routes, list):
        out["routes"] = [_route(r, f"routes[{i}]", problems) if isinstance(r, dict) else r for i, r in enumerate(routes)]
    dns = out.get("dns-resolver")
    if isinstance(dns, dict) and ("config" in dns or "running" in dns):
        config = dns.get("config")
        if config is None:
            del out["dns-resolver"]  # only a query's running part
        else:
            if isinstance(config, dict) and "options" in config:
                problems.append(not_implemented("dns-resolver.config.options", "resolver options"))
                config = {k: v for k, v in config.items() if k != "options"}
            out["dns-resolver"] = config
    rules = out.get("route-rules")
    if isinstance(rules, dict):
        if set(rules) - {"config", "running"}:
            problems.append("route-rules: expected an array, or an object with `config`")
        out["route-rules"] = rules.get("config", [])
    ifaces = out.get("interfaces")
    if isinstance(ifaces, list):
        out["interfaces"] = _merge_ovs_internal(
            [_iface(d, f"interfaces[{i}]", problems) if isinstance(d, dict) else d for i, d in enumerate(ifaces)])
    if problems:
        raise ValueError("; ".join(problems))
    return out


def _route(r: dict[str, Any], path: str, problems: list[str]) -> dict[str, Any]:
    r = dict(r)
    for key in sorted(_NOT_IMPLEMENTED_ROUTE & r.keys()):
        problems.append(not_implemented(f"{path}.{key}"))
    if r.get("metric") == -1:
        del r["metric"]  # nmstate: let the backend decide
    if r.get("table-id") == 0:
        del r["table-id"]  # nmstate: the main table
    return r


def _iface(d: dict[str, Any], path: str, problems: list[str]) -> dict[str, Any]:
    d = dict(d)
    itype = d.get("type")
    if isinstance(itype, str):
        if itype in UNSUPPORTED_TYPES:
            problems.append(not_implemented(f"{path}.type", f"interface type {itype!r}"))
        d["type"] = TYPE_ALIASES.get(itype, itype)
    if d.get("state") == "ignore":
        problems.append(not_implemented(f"{path}.state", "state: ignore"))
        del d["state"]
    for key in _QUERY_ONLY_IFACE & d.keys():
        del d[key]
    if d.get("accept-all-mac-addresses") is False:
        del d["accept-all-mac-addresses"]  # the kernel's default
    for key in sorted((_NOT_IMPLEMENTED_IFACE | {"accept-all-mac-addresses"}) & d.keys()):
        problems.append(not_implemented(f"{path}.{key}"))
    if d.get("type") == "ethernet" and "veth" in d:
        d["type"] = "veth"  # nmstate 1.x's spelling of a veth it creates
    if "mac-vlan" in d:
        d["macvlan"] = d.pop("mac-vlan")
    if "link-aggregation" in d:
        bond = d.pop("link-aggregation")
        if isinstance(bond, dict):
            bond = dict(bond)
            ports = bond.pop("port", bond.pop("ports", None))
            if ports is not None:
                d["ports"] = ports
            if bond.get("options"):
                problems.append(not_implemented(f"{path}.link-aggregation.options", "bond options"))
            bond.pop("options", None)
            d["bond"] = bond
    for fam in ("ipv4", "ipv6"):
        if isinstance(d.get(fam), dict):
            d[fam] = _ip(d[fam], f"{path}.{fam}", problems)
    if isinstance(d.get("bridge"), dict):
        _bridge(d, path, problems)
    return d


def _ip(ip: dict[str, Any], path: str, problems: list[str]) -> dict[str, Any]:
    ip = dict(ip)
    if ip.get("autoconf") is False:
        del ip["autoconf"]
    dynamic = ip.get("dhcp") is True
    for key, default in _AUTO_DEFAULTS.items():
        if key in ip and (not dynamic or ip[key] == default):
            del ip[key]  # nmstate ignores them without DHCP
    for key in sorted((_NOT_IMPLEMENTED_IP | {"autoconf"} | _AUTO_DEFAULTS.keys()) & ip.keys()):
        problems.append(not_implemented(f"{path}.{key}"))
    if isinstance(ip.get("address"), list):
        ip["address"] = [{k: v for k, v in a.items() if k not in _QUERY_ONLY_ADDR} if isinstance(a, dict) else a
                         for a in ip["address"]]
    return ip


def _bridge(d: dict[str, Any], path: str, problems: list[str]) -> None:
    bridge = dict(d["bridge"])
    opts = bridge.get("options")
    if isinstance(opts, dict):
        opts = {k: v for k, v in opts.items() if k not in _QUERY_ONLY_BRIDGE_OPTS}
        if "group-fwd-mask" in opts:
            opts.setdefault("group-forward-mask", opts.pop("group-fwd-mask"))
        for key in sorted(_NOT_IMPLEMENTED_BRIDGE_OPTS & opts.keys()):
            why = "bridge VLAN filtering" if key.startswith("vlan") else ""
            problems.append(not_implemented(f"{path}.bridge.options.{key}", why))
            del opts[key]
        stp = opts.get("stp")
        if d.get("type") == "ovs-bridge" and isinstance(stp, dict):
            # nmstate also writes an OVS bridge's STP switch as {enabled: BOOL}.
            for key in sorted(set(stp) - {"enabled"}):
                problems.append(not_implemented(f"{path}.bridge.options.stp.{key}", "OVS STP timers"))
            if "enabled" in stp:
                opts["stp"] = stp["enabled"]
            else:
                del opts["stp"]
        bridge["options"] = opts
    ports = bridge.get("port", bridge.get("ports"))
    bridge.pop("ports", None)
    if isinstance(ports, list):
        ports = [{"name": p} if isinstance(p, str) else p for p in ports]
        if d.get("type") == "ovs-bridge":
            # An OVS bridge's own internal port is implicit in op-dbus.
            ports = [p for p in ports if not (isinstance(p, dict) and p.get("name") == d.get("name"))]
        for j, p in enumerate(ports):
            if not isinstance(p, dict):
                continue
            if p.get("type") in ("system", "internal"):
                # Older nmstate marks an OVS port's kind; op-dbus takes it from the interface entries.
                ports[j] = p = {k: v for k, v in p.items() if k != "type"}
            elif "type" in p:
                problems.append(not_implemented(f"{path}.bridge.port[{j}].type", f"OVS port type {p['type']!r}"))
            if "vlans" in p:
                problems.append(not_implemented(f"{path}.bridge.port[{j}].vlans", "bridge VLAN filtering"))
            if "link-aggregation" in p:
                problems.append(not_implemented(f"{path}.bridge.port[{j}].link-aggregation", "OVS bonds"))
            if "vlan" in p and d.get("type") == "linux-bridge":
                problems.append(not_implemented(f"{path}.bridge.port[{j}].vlan",
                                                "bridge VLAN filtering"))
        bridge["port"] = ports
        if "ports" not in d:
            d["ports"] = [p["name"] for p in ports if isinstance(p, dict) and "name" in p]
    d["bridge"] = bridge


def _merge_ovs_internal(ifaces: list[Any]) -> list[Any]:
    """nmstate lists an OVS bridge and its own internal interface as two entries of one name: make them one."""
    bridges = {d["name"]: d for d in ifaces if isinstance(d, dict) and d.get("type") == "ovs-bridge" and "name" in d}
    out = []
    for d in ifaces:
        if (isinstance(d, dict) and d.get("type") == "ovs-interface" and d.get("name") in bridges
                and d.get("state") != "absent"):
            bridge = bridges[d["name"]]
            for key, value in d.items():
                if key not in ("name", "type"):
                    bridge.setdefault(key, value)
            continue
        out.append(d)
    return out


def to_nmstate(section: dict[str, Any]) -> dict[str, Any]:
    """A dumped `net` section in nmstate's layout (what `introspect net --format nmstate` prints)."""
    out: dict[str, Any] = {}
    ifaces = []
    for d in section.get("interfaces", []):
        d = dict(d)
        itype = d.get("type")
        if itype == "macvlan":
            d["type"] = "mac-vlan"
            if "macvlan" in d:
                d["mac-vlan"] = d.pop("macvlan")
        for fam in ("ipv4", "ipv6"):
            for a in d.get(fam, {}).get("address", []) or []:
                a["prefix-length"] = a.pop("prefix")
        ports = d.pop("ports", None)
        if itype in ("linux-bridge", "ovs-bridge") and ports is not None:
            bridge = dict(d.get("bridge", {}))
            given = {p["name"]: p for p in bridge.get("port", [])}
            own = [{"name": d["name"]}] if itype == "ovs-bridge" else []
            bridge["port"] = own + [given.get(p, {"name": p}) for p in ports]
            d["bridge"] = bridge
        elif itype == "bond" and ports is not None:
            bond = d.pop("bond", {})
            d["link-aggregation"] = {**bond, "port": ports}
        if itype == "ovs-bridge":
            # The bridge's own internal device carries its addresses and link settings in nmstate.
            internal = {"name": d["name"], "type": "ovs-interface"}
            for key in ("state", "mtu", "mac-address", "ipv4", "ipv6"):
                if key in d:
                    internal[key] = d.pop(key) if key != "state" else d[key]
            ifaces += [d, internal]
            continue
        ifaces.append(d)
    out["interfaces"] = ifaces
    routes = []
    for r in section.get("routes", []) or []:
        r = dict(r)
        for short, long in (("next-hop", "next-hop-address"), ("interface", "next-hop-interface"), ("table", "table-id")):
            if short in r:
                r[long] = r.pop(short)
        routes.append(r)
    out["routes"] = {"config": routes}
    if section.get("route-rules"):
        out["route-rules"] = {"config": section["route-rules"]}
    if section.get("dns-resolver") is not None:
        out["dns-resolver"] = {"config": section["dns-resolver"]}
    return out
