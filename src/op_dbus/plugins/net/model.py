"""The `net` section's model: nmstate-shaped interfaces, addresses and routes, validated strictly."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, Field, field_validator, model_validator

from op_dbus.plugin import Section

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


class Route(Section):
    destination: str
    next_hop: str | None = Field(default=None, validation_alias=AliasChoices("next-hop", "next-hop-address", "next_hop"),
                                 serialization_alias="next-hop")
    interface: IfName | None = Field(default=None, validation_alias=AliasChoices("interface", "next-hop-interface"),
                                     serialization_alias="interface")
    metric: int | None = Field(default=None, ge=0, le=U32_MAX)
    table: int | None = Field(default=None, validation_alias=AliasChoices("table", "table-id"), serialization_alias="table",
                              ge=1, le=U32_MAX)
    state: Literal["absent"] | None = None

    @field_validator("destination")
    @classmethod
    def _dst(cls, v: str) -> str:
        if v == "default":
            v = "0.0.0.0/0"
        try:
            return str(ipaddress.ip_network(v, strict=False))
        except ValueError as exc:
            raise ValueError(f"not a network: {v!r}") from exc

    @field_validator("next_hop")
    @classmethod
    def _nh(cls, v: str | None) -> str | None:
        return canonical_ip(v)


class NetSection(Section):
    """`plugins.net`: interfaces (by name), routes, and where to act (`netns`, `ovsdb` socket)."""

    interfaces: list[Interface] = Field(default_factory=list)
    routes: list[Route] | None = None
    netns: str | None = None
    ovsdb: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _nmstate_routes(cls, data: Any) -> Any:
        # nmstate nests routes as {"config": [...]}; accept that spelling too.
        if isinstance(data, dict) and isinstance(data.get("routes"), dict):
            routes = data["routes"]
            if set(routes) - {"config", "running"}:
                raise ValueError("routes: expected an array, or an object with `config`")
            data = {**data, "routes": routes.get("config", [])}
        return data

    @model_validator(mode="after")
    def _unique(self) -> NetSection:
        seen: set[str] = set()
        for iface in self.interfaces:
            if iface.name in seen:
                raise ValueError(f"interface {iface.name!r} is listed twice")
            seen.add(iface.name)
        return self
