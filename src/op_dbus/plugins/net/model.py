"""The `net` section's model: nmstate-shaped interfaces, addresses and routes, validated strictly."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, ConfigDict, Field, field_validator, model_validator

from op_dbus.plugin import Section

from .nmstate import from_nmstate

InterfaceType = Literal[
    "ethernet", "loopback", "veth", "linux-bridge", "vxlan", "macvlan", "vlan", "bond", "dummy",
    "ovs-bridge", "ovs-interface", "tun", "unknown",
]
# Kinds the plugin can create, with the rtnetlink IFLA_INFO_KIND each maps to.
KERNEL_KINDS: dict[str, str] = {
    "veth": "veth", "linux-bridge": "bridge", "vxlan": "vxlan", "macvlan": "macvlan",
    "vlan": "vlan", "bond": "bond", "dummy": "dummy",
}
OVS_TYPES = ("ovs-bridge", "ovs-interface")
# Types with member ports (listed in `ports`).
CONTROLLER_TYPES = ("ovs-bridge", "linux-bridge", "bond")


# Bounds of the kernel's own field types, so that nothing out of range ever reaches the codec.
U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF
IFNAMSIZ = 16


def check_ifname(v: str) -> str:
    """An interface name as the kernel's dev_valid_name() accepts it: 1..15 bytes, no NUL, '/', ':' or whitespace."""
    raw = v.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise ValueError(f"invalid interface name {v!r}: the kernel takes 1 to {IFNAMSIZ - 1} bytes")
    if v in (".", ".."):
        raise ValueError(f"invalid interface name {v!r}")
    bad = next((ch for ch in v if ch in "\0/:" or ch.isspace() or not ch.isprintable()), None)
    if bad is not None:
        raise ValueError(f"invalid interface name {v!r}: the kernel refuses the character {bad!r}")
    return v


IfName = Annotated[str, AfterValidator(check_ifname)]


def canonical_ip(v: str | None) -> str | None:
    """An address in the kernel's own spelling (so `2001:DB8::1` and `2001:db8::1` compare equal)."""
    if v is None:
        return v
    try:
        return str(ipaddress.ip_address(v))
    except ValueError as exc:
        raise ValueError(f"not an IP address: {v!r}") from exc


class Address(Section):
    ip: str
    prefix: int = Field(validation_alias=AliasChoices("prefix", "prefix-length"), serialization_alias="prefix", ge=0, le=128)

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        return str(canonical_ip(v))

    @model_validator(mode="after")
    def _prefix_fits(self) -> Address:
        bits = ipaddress.ip_address(self.ip).max_prefixlen
        if self.prefix > bits:
            raise ValueError(f"prefix-length {self.prefix} of {self.ip}: an IPv{4 if bits == 32 else 6} prefix is 0..{bits}")
        return self


class IPConfig(Section):
    """One address family of an interface. `address`, when given, is the complete set (link-local IPv6 aside)."""

    enabled: bool | None = None
    dhcp: bool | None = None
    address: list[Address] | None = None
    gateway: str | None = None

    @field_validator("gateway")
    @classmethod
    def _gw(cls, v: str | None) -> str | None:
        return canonical_ip(v)


class VethConfig(Section):
    peer: IfName
    peer_netns: str | None = Field(default=None, validation_alias=AliasChoices("peer-netns", "peer_netns"),
                                   serialization_alias="peer-netns")


class VxlanConfig(Section):
    id: int = Field(ge=0, lt=1 << 24)
    remote: str | None = None
    local: str | None = None
    base_iface: IfName | None = Field(default=None, validation_alias=AliasChoices("base-iface", "base_iface"),
                                      serialization_alias="base-iface")
    destination_port: int | None = Field(default=None, validation_alias=AliasChoices("destination-port", "destination_port"),
                                         serialization_alias="destination-port", ge=0, le=U16_MAX)


class MacvlanConfig(Section):
    base_iface: IfName = Field(validation_alias=AliasChoices("base-iface", "base_iface"), serialization_alias="base-iface")
    mode: Literal["private", "vepa", "bridge", "passthru", "source"] = "bridge"
    # False sets MACVLAN_FLAG_NOPROMISC (meaningful in passthru mode); left out, the flag is not managed.
    promiscuous: bool | None = None

    @model_validator(mode="after")
    def _nopromisc_needs_passthru(self) -> MacvlanConfig:
        if self.promiscuous is False and self.mode != "passthru":
            raise ValueError("macvlan promiscuous: false is a passthru-mode flag (the kernel takes it in no other mode)")
        return self


class _Hyphenated(Section):
    """nmstate's own sub-sections: keys are written with hyphens."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True,
                              alias_generator=lambda name: name.replace("_", "-"))


class StpOptions(_Hyphenated):
    """A linux-bridge's spanning tree, in seconds as nmstate gives them (the kernel counts hundredths)."""

    enabled: bool | None = None
    forward_delay: int | None = Field(default=None, ge=0, le=U32_MAX // 100)
    hello_time: int | None = Field(default=None, ge=0, le=U32_MAX // 100)
    max_age: int | None = Field(default=None, ge=0, le=U32_MAX // 100)
    priority: int | None = Field(default=None, ge=0, le=U16_MAX)


class BridgeOptions(_Hyphenated):
    """Options of a linux-bridge (`stp` an object) or of an ovs-bridge (`stp`, `rstp` booleans and the rest)."""

    stp: StpOptions | bool | None = None
    mac_ageing_time: int | None = Field(default=None, ge=0, le=U32_MAX // 100)
    multicast_snooping: bool | None = None
    group_forward_mask: int | None = Field(default=None, ge=0, le=U16_MAX)
    rstp: bool | None = None
    mcast_snooping_enable: bool | None = None
    fail_mode: Literal["secure", "standalone", ""] | None = None


class TrunkTag(_Hyphenated):
    id: int | None = Field(default=None, ge=0, lt=4096)
    id_range: dict[str, int] | None = None


class PortVlan(_Hyphenated):
    mode: Literal["access", "trunk"] | None = None
    tag: int | None = Field(default=None, ge=0, lt=4096)
    enable_native: bool | None = None
    trunk_tags: list[TrunkTag] | None = None


class BridgePort(_Hyphenated):
    name: IfName
    stp_hairpin_mode: bool | None = None
    stp_path_cost: int | None = Field(default=None, ge=1, le=U32_MAX)
    stp_priority: int | None = Field(default=None, ge=0, le=63)
    vlan: PortVlan | None = None


class BridgeConfig(_Hyphenated):
    """nmstate's `bridge` section; its `port` names are also the interface's `ports`."""

    options: BridgeOptions | None = None
    port: list[BridgePort] | None = None


class VlanConfig(Section):
    base_iface: IfName = Field(validation_alias=AliasChoices("base-iface", "base_iface"), serialization_alias="base-iface")
    id: int = Field(ge=0, lt=4095)


class BondConfig(Section):
    mode: Literal["balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb",
                  "balance-alb"] = "balance-rr"


class Interface(Section):
    name: IfName
    type: InterfaceType | None = None
    state: Literal["up", "down", "absent"] | None = None
    mtu: int | None = Field(default=None, ge=68, le=65536)
    mac_address: str | None = Field(default=None, validation_alias=AliasChoices("mac-address", "mac_address"),
                                    serialization_alias="mac-address", pattern=r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
    ports: list[IfName] | None = None
    datapath_type: str | None = Field(default=None, validation_alias=AliasChoices("datapath-type", "datapath_type"),
                                      serialization_alias="datapath-type")
    bridge: BridgeConfig | None = None
    veth: VethConfig | None = None
    vxlan: VxlanConfig | None = None
    macvlan: MacvlanConfig | None = None
    vlan: VlanConfig | None = None
    bond: BondConfig | None = None
    ipv4: IPConfig | None = None
    ipv6: IPConfig | None = None

    @field_validator("mac_address")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        return v.lower() if v else v

    @model_validator(mode="after")
    def _bridge_fits(self) -> Interface:
        if self.bridge is None:
            return self
        if self.type not in (None, "linux-bridge", "ovs-bridge"):
            raise ValueError(f"interface {self.name!r}: `bridge` belongs to a linux-bridge or an ovs-bridge")
        if self.bridge.port is not None and self.ports is not None and \
                [p.name for p in self.bridge.port] != self.ports:
            raise ValueError(f"interface {self.name!r}: `ports` and `bridge.port` name different ports")
        opts = self.bridge.options
        if opts is not None and self.type == "linux-bridge" and (
                isinstance(opts.stp, bool) or opts.rstp is not None or opts.mcast_snooping_enable is not None
                or opts.fail_mode is not None):
            raise ValueError(f"interface {self.name!r}: `stp` of a linux-bridge is an object; rstp, "
                             "mcast-snooping-enable and fail-mode are ovs-bridge options")
        if opts is not None and self.type == "ovs-bridge" and (
                isinstance(opts.stp, StpOptions) or opts.mac_ageing_time is not None
                or opts.multicast_snooping is not None or opts.group_forward_mask is not None):
            raise ValueError(f"interface {self.name!r}: `stp` of an ovs-bridge is a boolean; mac-ageing-time, "
                             "multicast-snooping and group-forward-mask are linux-bridge options")
        for port in self.bridge.port or []:
            if self.type == "ovs-bridge" and (port.stp_hairpin_mode is not None or port.stp_path_cost is not None
                                              or port.stp_priority is not None):
                raise ValueError(f"interface {self.name!r}: port {port.name!r}: stp-* port options belong to a "
                                 "linux-bridge")
        return self


RouteType = Literal["blackhole", "unreachable", "prohibit"]


class Route(Section):
    # Left out only in an absent entry, which then matches every route on the keys it gives.
    destination: str | None = None
    next_hop: str | None = Field(default=None, validation_alias=AliasChoices("next-hop", "next-hop-address", "next_hop"),
                                 serialization_alias="next-hop")
    interface: IfName | None = Field(default=None, validation_alias=AliasChoices("interface", "next-hop-interface"),
                                     serialization_alias="interface")
    metric: int | None = Field(default=None, ge=0, le=U32_MAX)
    table: int | None = Field(default=None, validation_alias=AliasChoices("table", "table-id"), serialization_alias="table",
                              ge=1, le=U32_MAX)
    state: Literal["absent"] | None = None
    route_type: RouteType | None = Field(default=None, validation_alias=AliasChoices("route-type", "route_type"),
                                         serialization_alias="route-type")
    source: str | None = None
    # Per-route metrics (RTA_METRICS), nmstate's names.
    mtu: int | None = Field(default=None, ge=0, le=U32_MAX)
    cwnd: int | None = Field(default=None, ge=0, le=U32_MAX)
    initcwnd: int | None = Field(default=None, ge=0, le=U32_MAX)
    initrwnd: int | None = Field(default=None, ge=0, le=U32_MAX)
    advmss: int | None = Field(default=None, ge=0, le=U32_MAX)
    quickack: bool | None = None

    def metrics(self) -> dict[str, int]:
        """The per-route metrics given, as the kernel's u32 values."""
        out = {k: getattr(self, k) for k in ("mtu", "cwnd", "initcwnd", "initrwnd", "advmss")
               if getattr(self, k) is not None}
        if self.quickack is not None:
            out["quickack"] = int(self.quickack)
        return out

    @field_validator("destination")
    @classmethod
    def _dst(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v == "default":
            v = "0.0.0.0/0"
        try:
            return str(ipaddress.ip_network(v, strict=False))
        except ValueError as exc:
            raise ValueError(f"not a network: {v!r}") from exc

    @field_validator("next_hop", "source")
    @classmethod
    def _nh(cls, v: str | None) -> str | None:
        return canonical_ip(v)

    @model_validator(mode="after")
    def _complete(self) -> Route:
        if self.state != "absent" and self.destination is None:
            raise ValueError("a route needs a `destination` (only an absent entry may leave it out)")
        if self.route_type is not None and (self.next_hop or self.interface):
            raise ValueError(f"route {self.destination}: a {self.route_type} route has no next hop nor interface")
        return self


def _network(v: str) -> str:
    try:
        return str(ipaddress.ip_network(v, strict=False))
    except ValueError as exc:
        raise ValueError(f"not a network: {v!r}") from exc


class RouteRule(_Hyphenated):
    """nmstate's route rule: select by source, destination, fwmark and incoming interface; look up `route-table`."""

    family: Literal["ipv4", "ipv6"] | None = None
    ip_from: str | None = None
    ip_to: str | None = None
    priority: int | None = Field(default=None, ge=0, le=U32_MAX)
    route_table: int | None = Field(default=None, ge=0, le=U32_MAX)
    fwmark: int | None = Field(default=None, ge=0, le=U32_MAX)
    fwmask: int | None = Field(default=None, ge=0, le=U32_MAX)
    iif: IfName | None = None
    action: Literal["blackhole", "unreachable", "prohibit"] | None = None
    state: Literal["absent"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _hex_marks(cls, data: Any) -> Any:
        # nmstate takes a mark as an integer or a hex string ("0x10").
        if isinstance(data, dict):
            data = dict(data)
            for key in ("fwmark", "fwmask"):
                if isinstance(data.get(key), str):
                    try:
                        data[key] = int(data[key], 16)
                    except ValueError as exc:
                        raise ValueError(f"{key}: not a number: {data[key]!r}") from exc
            if data.get("route-table") == 0:
                del data["route-table"]  # nmstate: the main table
        return data

    @field_validator("ip_from", "ip_to")
    @classmethod
    def _net(cls, v: str | None) -> str | None:
        return v if v is None else _network(v)

    @model_validator(mode="after")
    def _one_family(self) -> RouteRule:
        versions = {ipaddress.ip_network(n).version for n in (self.ip_from, self.ip_to) if n}
        if self.family:
            versions.add(4 if self.family == "ipv4" else 6)
        if len(versions) > 1:
            raise ValueError("a route rule mixes IPv4 and IPv6 (ip-from, ip-to, family)")
        if self.action is not None and self.route_table is not None:
            raise ValueError(f"a route rule with action {self.action} looks up no route-table")
        return self

    def version(self) -> int:
        for n in (self.ip_from, self.ip_to):
            if n:
                return ipaddress.ip_network(n).version
        return 6 if self.family == "ipv6" else 4


_DOMAIN = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                     r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?")


class DnsConfig(_Hyphenated):
    """nmstate's `dns-resolver.config`: name servers and search domains, set through systemd-resolved."""

    server: list[str] = Field(default_factory=list)
    search: list[str] = Field(default_factory=list)

    @field_validator("server")
    @classmethod
    def _servers(cls, v: list[str]) -> list[str]:
        return [str(canonical_ip(s)) for s in v]

    @field_validator("search")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _DOMAIN.fullmatch(name):
                raise ValueError(f"not a domain name: {name!r}")
        return [name.rstrip(".").lower() for name in v]


class NetSection(Section):
    """`plugins.net`: interfaces (by name), routes, and where to act (`netns`, `ovsdb` socket)."""

    interfaces: list[Interface] = Field(default_factory=list)
    routes: list[Route] | None = None
    route_rules: list[RouteRule] | None = Field(default=None, validation_alias=AliasChoices("route-rules", "route_rules"),
                                                serialization_alias="route-rules")
    dns_resolver: DnsConfig | None = Field(default=None, validation_alias=AliasChoices("dns-resolver", "dns_resolver"),
                                           serialization_alias="dns-resolver")
    netns: str | None = None
    ovsdb: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _nmstate(cls, data: Any) -> Any:
        # nmstate's own layout (routes: {config: [...]}, bridge: {port: [...]}, mac-vlan, ...) reads as op-dbus's.
        return from_nmstate(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _unique(self) -> NetSection:
        seen: set[str] = set()
        for iface in self.interfaces:
            if iface.name in seen:
                raise ValueError(f"interface {iface.name!r} is listed twice")
            seen.add(iface.name)
        return self
