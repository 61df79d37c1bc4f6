"""Hostile numbers and names in the net section: every value is bounded by its kernel type before it reaches the codec."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from op_dbus.backends import netlink as nl
from op_dbus.errors import InvalidInput
from op_dbus.plugins.net import NetSection


def _iface(**extra: object) -> dict:
    return {"interfaces": [{"name": "v0", "type": "veth", "veth": {"peer": "v0p"}, **extra}]}


@pytest.mark.parametrize(("doc", "words"), [
    (_iface(ipv4={"address": [{"ip": "198.18.0.1", "prefix-length": 99}]}), "IPv4 prefix is 0..32"),
    (_iface(ipv4={"address": [{"ip": "198.18.0.1", "prefix-length": 33}]}), "IPv4 prefix is 0..32"),
    (_iface(ipv6={"address": [{"ip": "2001:db8::1", "prefix-length": 129}]}), "less than or equal to 128"),
    ({"routes": [{"destination": "198.19.0.0/24", "next-hop-interface": "v0", "metric": 2 ** 40}]}, "4294967295"),
    ({"routes": [{"destination": "198.19.0.0/24", "next-hop-interface": "v0", "table-id": 2 ** 32}]}, "4294967295"),
    ({"interfaces": [{"name": "vx0", "type": "vxlan", "vxlan": {"id": 1, "destination-port": 70000}}]}, "65535"),
    ({"interfaces": [{"name": "vx0", "type": "vxlan", "vxlan": {"id": 1 << 24}}]}, "16777216"),
    ({"interfaces": [{"name": "v0", "mtu": 1 << 33}]}, "65536"),
])
def test_numbers_out_of_their_kernel_range_are_refused(doc: dict, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        NetSection.model_validate(doc)


@pytest.mark.parametrize("name", [
    "", "a" * 16, "é" * 8, "eth\0", "a/b", "a:b", "a b", "eth0\n", "tab\t", ".", "..", "x/../y\n", "bell\a",
])
def test_interface_names_the_kernel_refuses(name: str) -> None:
    for doc in (
        {"interfaces": [{"name": name, "type": "veth", "veth": {"peer": "p0"}}]},
        {"interfaces": [{"name": "v0", "type": "veth", "veth": {"peer": name}}]},
        {"interfaces": [{"name": "br0", "type": "linux-bridge", "ports": [name]}]},
        {"interfaces": [{"name": "mv0", "type": "macvlan", "macvlan": {"base-iface": name}}]},
        {"routes": [{"destination": "198.19.0.0/24", "next-hop-interface": name}]},
    ):
        with pytest.raises(ValidationError, match="invalid interface name"):
            NetSection.model_validate(doc)


@pytest.mark.parametrize("name", ["a" * 15, "é" * 7, "eth0.100", "br-ex_1", "v@1"])
def test_interface_names_the_kernel_takes(name: str) -> None:
    NetSection.model_validate({"interfaces": [{"name": name, "type": "veth", "veth": {"peer": "p0"}}]})


@pytest.mark.parametrize("build", [
    lambda: nl.route_req(True, "198.19.0.0", 24, priority=2 ** 40),
    lambda: nl.route_req(True, "198.19.0.0", 24, table=2 ** 33),
    lambda: nl.route_req(True, "198.19.0.0", 300),
    lambda: nl.vxlan_data(1, port=70000),
    lambda: nl.link_set("v0", mtu=-1),
    lambda: nl.addr_req(True, 1, "198.18.0.1", 999),
])
def test_the_codec_never_lets_struct_error_escape(build) -> None:
    with pytest.raises(InvalidInput, match="does not fit its field"):
        build()
