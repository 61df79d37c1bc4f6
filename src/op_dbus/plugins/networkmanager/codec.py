"""NetworkManager's D-Bus settings (a{sa{sv}} as JSON variants) to the section's setting groups and back."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from typing import Any

from op_dbus.secret import Secret

Json = dict[str, Any]


def _v(signature: str, data: Any) -> Json:
    return {"type": signature, "data": data}


def _addresses_out(values: list[str]) -> Any:
    out = []
    for value in values:
        iface = ipaddress.ip_interface(value)
        out.append({"address": _v("s", str(iface.ip)), "prefix": _v("u", iface.network.prefixlen)})
    return out


def _addresses_in(data: Any) -> list[str]:
    return [f"{a['address']['data']}/{a['prefix']['data']}" for a in data]


def _dns4_out(values: list[str]) -> list[int]:
    # NetworkManager keeps IPv4 DNS servers as 32-bit numbers in network byte order, read as host-order integers.
    return [struct.unpack("=I", socket.inet_aton(v))[0] for v in values]


def _dns4_in(data: list[int]) -> list[str]:
    return [socket.inet_ntoa(struct.pack("=I", n)) for n in data]


def _dns6_out(values: list[str]) -> list[list[int]]:
    return [list(ipaddress.IPv6Address(v).packed) for v in values]


def _dns6_in(data: list[list[int]]) -> list[str]:
    return [str(ipaddress.IPv6Address(bytes(b))) for b in data]


def _peers_out(values: list[dict[str, Any]]) -> list[Json]:
    sigs = {"public-key": "s", "endpoint": "s", "allowed-ips": "as", "persistent-keepalive": "u"}
    return [{k: _v(sigs[k], v) for k, v in peer.items()} for peer in values]


def _peers_in(data: list[Json]) -> list[dict[str, Any]]:
    keep = ("public-key", "endpoint", "allowed-ips", "persistent-keepalive")
    return [{k: peer[k]["data"] for k in keep if k in peer} for peer in data]


def _same(x: Any) -> Any:
    return x


class Key:
    """One setting key: its D-Bus name and signature, conversions, the value NetworkManager leaves out, secrecy."""

    def __init__(self, signature: str, default: Any, *, dbus_name: str | None = None,
                 out: Callable[[Any], Any] = _same, into: Callable[[Any], Any] = _same, secret: bool = False) -> None:
        self.signature, self.default, self.dbus_name = signature, default, dbus_name
        self.out, self.into, self.secret = out, into, secret


_IP_COMMON = {
    "method": Key("s", None),
    "addresses": Key("aa{sv}", [], dbus_name="address-data", out=_addresses_out, into=_addresses_in),
    "gateway": Key("s", None),
    "dns-search": Key("as", []),
    "route-metric": Key("x", -1),
    "never-default": Key("b", False),
}

KEYS: dict[str, dict[str, Key]] = {
    "connection": {
        "type": Key("s", None),
        "interface-name": Key("s", None),
        "autoconnect": Key("b", True),
        "autoconnect-priority": Key("i", 0),
        "master": Key("s", None),
        "slave-type": Key("s", None),
        "zone": Key("s", None),
    },
    "ipv4": {**_IP_COMMON, "dns": Key("au", [], out=_dns4_out, into=_dns4_in)},
    "ipv6": {**_IP_COMMON, "dns": Key("aay", [], out=_dns6_out, into=_dns6_in)},
    "802-3-ethernet": {
        "mtu": Key("u", 0),
        "cloned-mac-address": Key("s", None, dbus_name="assigned-mac-address"),
    },
    "bridge": {"stp": Key("b", True), "priority": Key("u", 32768), "forward-delay": Key("u", 15)},
    "802-11-wireless": {
        "ssid": Key("ay", None, out=lambda s: list(s.encode()), into=lambda b: bytes(b).decode(errors="replace")),
        "mode": Key("s", "infrastructure"),
        "band": Key("s", None),
    },
    "802-11-wireless-security": {"key-mgmt": Key("s", None), "psk": Key("s", None, secret=True)},
    "vpn": {"service-type": Key("s", None), "data": Key("a{ss}", {}), "secrets": Key("a{ss}", {}, secret=True)},
    "wireguard": {
        "private-key": Key("s", None, secret=True),
        "listen-port": Key("u", 0),
        "peers": Key("aa{sv}", [], out=_peers_out, into=_peers_in),
    },
}

# Groups whose secrets NetworkManager hands out only through GetSecrets (never in GetSettings).
SECRET_GROUPS = tuple(g for g, keys in KEYS.items() if any(k.secret for k in keys.values()))


def reveal(value: Any) -> Any:
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    return value


def encode_group(group: str, values: dict[str, Any]) -> Json:
    """Declared keys of one group as D-Bus variants (JSON form); secrets revealed, for the backend only."""
    out: Json = {}
    for name, value in values.items():
        key = KEYS[group][name]
        out[key.dbus_name or name] = _v(key.signature, key.out(reveal(value)))
    return out


def decode_group(group: str, raw: Json, names: list[str] | None) -> dict[str, Any]:
    """The keys `names` (None: every known key NetworkManager reports) of one group from GetSettings' JSON form.

    A key NetworkManager leaves out has its default; secrets come back as Secret values.
    """
    known = KEYS[group]
    out: dict[str, Any] = {}
    for name in names if names is not None else list(known):
        key = known[name]
        dbus_name = key.dbus_name or name
        if dbus_name in raw:
            value = key.into(raw[dbus_name]["data"])
        elif names is None:
            continue
        else:
            value = key.default
        if key.secret and value is not None:
            value = {k: Secret(v, name=f"{group}.{name}.{k}") for k, v in value.items()} if isinstance(value, dict) \
                else Secret(value, name=f"{group}.{name}")
        out[name] = value
    return out


def merge(base: Json, groups: dict[str, dict[str, Any]]) -> Json:
    """`base` (a profile's whole settings, JSON form) with the declared keys of `groups` set over it."""
    merged = {g: dict(v) for g, v in base.items()}
    for group, values in groups.items():
        merged.setdefault(group, {}).update(encode_group(group, values))
        if group in ("ipv4", "ipv6") and "addresses" in values:
            merged[group].pop("addresses", None)  # the deprecated form would win over address-data
        if group in ("ipv4", "ipv6") and "gateway" in values and values["gateway"] is None:
            merged[group].pop("gateway", None)
    return merged
