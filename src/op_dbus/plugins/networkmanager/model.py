"""The `networkmanager` section: connection profiles by id, their NetworkManager settings and activation."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from op_dbus.plugin import Section
from op_dbus.secret import EnvValue, Secret

# The profile types this plugin declares (NetworkManager's own names for `connection.type`).
TYPES = ("802-3-ethernet", "bridge", "802-11-wireless", "vpn", "wireguard")
# Types NetworkManager can only activate with hardware or kernel support this machine may lack.
WIFI, WIREGUARD = "802-11-wireless", "wireguard"


def _always_secret(value: Any) -> Secret:
    """A secret setting is secret however it is written (a plain string too): it never reaches output or the log."""
    return value if isinstance(value, Secret) else Secret(str(value), origin="name")


SecretValue = Annotated[EnvValue, AfterValidator(_always_secret)]


def _cidr(value: str) -> str:
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError(f"not an address with prefix (e.g. 198.18.0.1/24): {value!r}") from None
    if "/" not in value:
        raise ValueError(f"address {value!r} needs a prefix length (e.g. {value}/24)")
    return f"{iface.ip}/{iface.network.prefixlen}"


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None


Cidr = Annotated[str, AfterValidator(_cidr)]
Ip = Annotated[str, AfterValidator(_ip)]


class ConnectionSetting(Section):
    """`connection`: what the profile is and where it applies (`id` and `uuid` are NetworkManager's own)."""

    type: Literal["802-3-ethernet", "bridge", "802-11-wireless", "vpn", "wireguard"] | None = None
    interface_name: str | None = Field(None, alias="interface-name", max_length=15)
    autoconnect: bool | None = None
    autoconnect_priority: int | None = Field(None, alias="autoconnect-priority")
    master: str | None = None
    slave_type: Literal["bridge"] | None = Field(None, alias="slave-type")
    zone: str | None = None


class IpSetting(Section):
    """`ipv4` / `ipv6`: how the profile configures addresses, gateway and DNS."""

    method: Literal["auto", "manual", "disabled", "link-local", "shared", "ignore"] | None = None
    addresses: list[Cidr] | None = None
    gateway: Ip | None = None
    dns: list[Ip] | None = None
    dns_search: list[str] | None = Field(None, alias="dns-search")
    route_metric: int | None = Field(None, alias="route-metric")
    never_default: bool | None = Field(None, alias="never-default")


class EthernetSetting(Section):
    mtu: int | None = Field(None, ge=0, le=65535)
    cloned_mac_address: str | None = Field(None, alias="cloned-mac-address")


class BridgeSetting(Section):
    stp: bool | None = None
    priority: int | None = Field(None, ge=0, le=65535)
    forward_delay: int | None = Field(None, alias="forward-delay", ge=0, le=30)


class WifiSetting(Section):
    ssid: str | None = Field(None, min_length=1, max_length=32)
    mode: Literal["infrastructure", "ap", "adhoc", "mesh"] | None = None
    band: Literal["a", "bg"] | None = None


class WifiSecuritySetting(Section):
    key_mgmt: Literal["none", "ieee8021x", "wpa-psk", "sae", "owe", "wpa-eap"] | None = Field(None, alias="key-mgmt")
    psk: SecretValue | None = None


class VpnSetting(Section):
    service_type: str | None = Field(None, alias="service-type")
    data: dict[str, str] | None = None
    secrets: dict[str, SecretValue] | None = None


class WireguardPeer(Section):
    public_key: str = Field(alias="public-key")
    endpoint: str | None = None
    allowed_ips: list[str] | None = Field(None, alias="allowed-ips")
    persistent_keepalive: int | None = Field(None, alias="persistent-keepalive", ge=0, le=65535)


class WireguardSetting(Section):
    private_key: SecretValue | None = Field(None, alias="private-key")
    listen_port: int | None = Field(None, alias="listen-port", ge=0, le=65535)
    peers: list[WireguardPeer] | None = None


class Profile(Section):
    """One connection profile, named by its `id`; the setting groups are NetworkManager's (D-Bus names)."""

    state: Literal["present", "absent"] = "present"
    active: bool | None = None
    connection: ConnectionSetting | None = None
    ipv4: IpSetting | None = None
    ipv6: IpSetting | None = None
    ethernet: EthernetSetting | None = Field(None, alias="802-3-ethernet")
    bridge: BridgeSetting | None = None
    wifi: WifiSetting | None = Field(None, alias="802-11-wireless")
    wifi_security: WifiSecuritySetting | None = Field(None, alias="802-11-wireless-security")
    vpn: VpnSetting | None = None
    wireguard: WireguardSetting | None = None

    def groups(self) -> dict[str, dict[str, Any]]:
        """The declared setting groups as {D-Bus group name: {key: value}} (Secrets kept as objects)."""
        out: dict[str, dict[str, Any]] = {}
        for field_name, info in type(self).model_fields.items():
            if field_name in ("state", "active"):
                continue
            value = getattr(self, field_name)
            if value is not None:
                out[info.alias or field_name] = value.model_dump(mode="python", by_alias=True, exclude_none=True)
        return out


ProfileId = Annotated[str, Field(min_length=1, max_length=255)]


class NetworkManagerSection(Section):
    connections: dict[ProfileId, Profile] = {}
