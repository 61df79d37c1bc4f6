"""NetworkManager's D-Bus setting values to the section's and back, and secrets merged into settings."""

from __future__ import annotations

import sys
from pathlib import Path

from op_dbus import secret
from op_dbus.backends.dbus_types import from_json, to_json
from op_dbus.plugins.networkmanager import codec
from op_dbus.plugins.networkmanager.query import merge_secrets

VALUES = {
    "ipv4": {"method": "manual", "addresses": ["198.18.0.1/24", "198.18.1.1/16"], "gateway": "198.18.0.254",
             "dns": ["198.18.0.53", "1.2.3.4"], "dns-search": ["example.com"], "route-metric": 100,
             "never-default": True},
    "ipv6": {"method": "manual", "addresses": ["2001:db8::1/64"], "dns": ["2001:db8::53"]},
    "802-11-wireless": {"ssid": "café", "mode": "ap"},
    "wireguard": {"listen-port": 51820, "peers": [{"public-key": "k", "endpoint": "198.18.0.2:51820",
                                                   "allowed-ips": ["198.18.9.0/24"], "persistent-keepalive": 25}]},
}


def test_every_group_survives_the_bus_unchanged() -> None:
    for group, values in VALUES.items():
        wire = to_json("a{sa{sv}}", from_json("a{sa{sv}}", {group: codec.encode_group(group, values)}))
        assert codec.decode_group(group, wire[group], list(values)) == values, group


def test_ipv4_dns_is_in_network_byte_order() -> None:
    # 1.2.3.4 is the bytes 01 02 03 04 in memory, read as a host-order integer (0x04030201 on x86).
    wire = codec.encode_group("ipv4", {"dns": ["1.2.3.4"]})["dns"]["data"]
    assert wire == [int.from_bytes(b"\x01\x02\x03\x04", sys.byteorder)]


def test_missing_keys_read_as_networkmanager_defaults_and_secrets_as_secret_values(tmp_path: Path) -> None:
    secret.use_key_dir(tmp_path)
    got = codec.decode_group("802-11-wireless-security", {"psk": {"type": "s", "data": "hunter22"}},
                             ["key-mgmt", "psk"])
    assert got["key-mgmt"] is None and isinstance(got["psk"], secret.Secret) and got["psk"] == secret.Secret("hunter22")
    assert codec.decode_group("bridge", {}, ["stp", "priority"]) == {"stp": True, "priority": 32768}


def test_wireguard_peer_secrets_merge_into_the_full_peers() -> None:
    settings = {"peers": {"type": "aa{sv}", "data": [
        {"public-key": {"type": "s", "data": "A"}, "endpoint": {"type": "s", "data": "198.18.0.2:1"}},
        {"public-key": {"type": "s", "data": "B"}, "endpoint": {"type": "s", "data": "198.18.0.3:1"}}]}}
    secrets = {"private-key": {"type": "s", "data": "priv"}, "peers": {"type": "aa{sv}", "data": [
        {"public-key": {"type": "s", "data": "B"}, "preshared-key": {"type": "s", "data": "psk-b"}}]}}
    merged = merge_secrets(settings, secrets)
    assert merged["private-key"]["data"] == "priv"
    a, b = merged["peers"]["data"]
    assert a["endpoint"]["data"] == "198.18.0.2:1" and "preshared-key" not in a
    assert b["endpoint"]["data"] == "198.18.0.3:1" and b["preshared-key"]["data"] == "psk-b"
