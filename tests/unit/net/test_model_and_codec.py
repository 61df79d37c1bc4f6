"""Pure tests of the net section model, the rtnetlink codec and the OVSDB framing."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest
from pydantic import ValidationError

from op_dbus.backends import netlink as nl
from op_dbus.backends.ovsdb import Ovsdb, OvsdbError
from op_dbus.errors import ServiceUnavailable
from op_dbus.plugins.net import NetPlugin, NetSection


def test_nmstate_spellings_equal_the_short_ones() -> None:
    nm = NetSection.model_validate({
        "interfaces": [{"name": "br0", "type": "ovs-bridge", "mac-address": "02:00:00:00:00:AB",
                        "ipv4": {"address": [{"ip": "198.18.0.1", "prefix-length": 24}]}}],
        "routes": {"config": [{"destination": "198.19.0.0/24", "next-hop-address": "198.18.0.2",
                               "next-hop-interface": "br0", "table-id": 100}]},
    })
    short = NetSection.model_validate({
        "interfaces": [{"name": "br0", "type": "ovs-bridge", "mac-address": "02:00:00:00:00:ab",
                        "ipv4": {"address": [{"ip": "198.18.0.1", "prefix": 24}]}}],
        "routes": [{"destination": "198.19.0.0/24", "next-hop": "198.18.0.2", "interface": "br0", "table": 100}],
    })
    assert nm == short
    dump = NetPlugin().dump(nm)
    assert dump["routes"][0] == {"destination": "198.19.0.0/24", "next-hop": "198.18.0.2", "interface": "br0", "table": 100}
    assert dump["interfaces"][0]["ipv4"]["address"] == [{"ip": "198.18.0.1", "prefix": 24}]


def test_guide_example_validates() -> None:
    sec = NetSection.model_validate({"interfaces": [{
        "name": "br0", "type": "ovs-bridge", "ports": ["ens1"],
        "ipv4": {"enabled": True, "dhcp": False, "address": [{"ip": "10.0.1.10", "prefix": 24}], "gateway": "10.0.1.1"}}]})
    assert sec.interfaces[0].ipv4 is not None and sec.interfaces[0].ipv4.gateway == "10.0.1.1"


@pytest.mark.parametrize("bad", [
    {"interfaces": [{"name": "x", "type": "wifi"}]},
    {"interfaces": [{"name": "x", "mtu": "1500"}]},
    {"interfaces": [{"name": "x", "colour": "red"}]},
    {"interfaces": [{"name": "x"}, {"name": "x"}]},
    {"interfaces": [{"name": "x", "ipv4": {"address": [{"ip": "300.1.1.1", "prefix": 24}]}}]},
    {"interfaces": [{"name": "waytoolonginterfacename"}]},
    {"routes": [{"destination": "not-a-net"}]},
    {"routes": {"bogus": []}},
])
def test_invalid_sections_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        NetSection.model_validate(bad)


def test_link_request_encodes_and_decodes() -> None:
    mtype, flags, body = nl.link_add("vx0", "vxlan", data=nl.vxlan_data(42, remote="198.18.0.2", port=4789), mtu=1400,
                                     mac="02:00:00:00:00:01")
    assert mtype == nl.RTM_NEWLINK and flags & nl.NLM_F_CREATE and flags & nl.NLM_F_EXCL
    link = nl.decode_link(body)
    assert (link.name, link.kind, link.mtu, link.mac) == ("vx0", "vxlan", 1400, "02:00:00:00:00:01")
    assert link.info == {"id": 42, "remote": "198.18.0.2", "port": 4789}


def test_addr_and_route_requests_decode() -> None:
    _t, _f, body = nl.addr_req(True, 7, "2001:db8::1", 64)
    a = nl.decode_addr(body)
    assert (a.family, a.index, a.ip, a.prefix) == (socket.AF_INET6, 7, "2001:db8::1", 64)
    _t, _f, body = nl.route_req(True, "198.19.0.0", 24, gateway="198.18.0.1", oif=3, priority=5, table=1000)
    r = nl.decode_route(body)
    assert (r.dst, r.dst_len, r.gateway, r.oif, r.priority, r.table) == ("198.19.0.0", 24, "198.18.0.1", 3, 5, 1000)


def test_extended_ack_is_decoded() -> None:
    # An error ack as the kernel sends it with NETLINK_CAP_ACK: errno, the request header, then TLVs.
    payload = struct.pack("=i", -95) + struct.pack("=IHHII", 40, 16, 5, 1, 0) + nl.attr_str(nl.NLMSGERR_ATTR_MSG,
                                                                                           "Unknown device type")
    err, ext = nl.Netlink._decode_error(nl.NLM_F_ACK_TLVS | 0x100, memoryview(payload))
    assert (err, ext) == (95, "Unknown device type")
    e = nl.error_for(nl.Reply(err, ext), "create x0")
    assert e.code == "EOPNOTSUPP" and "Unknown device type" in str(e)


async def _fake_ovsdb(path: str, script) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await script(reader, writer)

    return await asyncio.start_unix_server(handle, path)


async def test_ovsdb_framing_echo_and_result_checks(tmp_path) -> None:
    path = str(tmp_path / "db.sock")
    echoed: list = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dec = json.JSONDecoder()
        buf = ""
        # The server pings first, and answers in pieces and in bulk: framing must not care.
        writer.write(b'{"id":"e1","method":"echo","params":["hi"]}')
        while True:
            data = await reader.read(4096)
            if not data:
                return
            buf += data.decode()
            while buf.strip():
                buf = buf.lstrip()
                try:
                    msg, end = dec.raw_decode(buf)
                except json.JSONDecodeError:
                    break
                buf = buf[end:]
                if "result" in msg:
                    echoed.append(msg)
                    continue
                if msg["params"][1].get("op") == "select":
                    reply = json.dumps({"id": msg["id"], "result": [{"rows": [{"name": "é"}]}], "error": None}).encode()
                    writer.write(reply[:7])
                    await writer.drain()
                    await asyncio.sleep(0.01)
                    writer.write(reply[7:])
                else:
                    # one op ok, then the trailing commit error
                    writer.write(json.dumps({"id": msg["id"], "result": [{}, {"error": "constraint violation",
                                                                               "details": "duplicate name"}],
                                             "error": None}).encode())

    server = await _fake_ovsdb(path, script)
    db = await Ovsdb.connect(path)
    try:
        assert await db.select("Bridge") == [{"name": "é"}]
        with pytest.raises(OvsdbError, match="commit: constraint violation: duplicate name"):
            await db.transact([{"op": "insert", "table": "Bridge", "row": {}}])
        assert echoed and echoed[0]["id"] == "e1" and echoed[0]["result"] == ["hi"]
    finally:
        await db.close()
        server.close()


async def test_ovsdb_missing_socket_says_what_to_check(tmp_path) -> None:
    with pytest.raises(ServiceUnavailable) as exc:
        await Ovsdb.connect(str(tmp_path / "db.sock"))
    assert "openvswitch-switch" in str(exc.value) and str(tmp_path) in str(exc.value)
