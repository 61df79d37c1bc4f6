"""The rtnetlink decoders on malformed messages: a decoded object or MalformedMessage (a BackendError), never a
struct.error, ValueError or IndexError escaping into the plugin or the agent's event loop."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from op_dbus.backends import netlink as nl
from op_dbus.errors import BackendError

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=os.environ.get("CI") == "true")
DECODERS = (nl.decode_link, nl.decode_addr, nl.decode_route)


def decodes_or_refuses(msg: bytes) -> None:
    for decode in DECODERS:
        try:
            decode(msg)
        except nl.MalformedMessage as exc:
            assert isinstance(exc, BackendError) and "malformed" in str(exc)


attributes = st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=24)), max_size=8)


def well_framed(header: bytes, attrs: list[tuple[int, bytes]], nested: list[tuple[int, bytes]]) -> bytes:
    """A message whose outer framing is right and whose attribute payloads are anything, one nested level too."""
    inner = b"".join(nl.attr(kind, data) for kind, data in nested)
    body = b"".join(nl.attr(kind, data) for kind, data in attrs)
    return header + body + nl.nested(nl.IFLA_LINKINFO, nl.attr(nl.IFLA_INFO_KIND, b"vxlan\0") +
                                     nl.nested(nl.IFLA_INFO_DATA, inner))


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes(msg: bytes) -> None:
    decodes_or_refuses(msg)


@SETTINGS
@given(st.binary(min_size=16, max_size=16), attributes, attributes)
def test_well_framed_messages_with_any_attribute_payloads(header: bytes, attrs: list[tuple[int, bytes]],
                                                          nested: list[tuple[int, bytes]]) -> None:
    decodes_or_refuses(well_framed(header, attrs, nested))


@pytest.mark.parametrize("kind", ["vxlan", "macvlan", "vlan", "bond"])
def test_kind_specific_data_with_empty_payloads(kind: str) -> None:
    data = b"".join(nl.attr(a, b"") for a in range(1, 18))
    msg = nl._IFINFO.pack(0, 0, 5, 0, 0) + nl.nested(nl.IFLA_LINKINFO, nl.attr_str(nl.IFLA_INFO_KIND, kind) +
                                                     nl.nested(nl.IFLA_INFO_DATA, data))
    with pytest.raises(nl.MalformedMessage, match="malformed rtnetlink link message"):
        nl.decode_link(msg)


@pytest.mark.parametrize(("decode", "msg"), [
    (nl.decode_link, b"\0" * 8),                                                          # shorter than ifinfomsg
    (nl.decode_link, nl._IFINFO.pack(0, 0, 1, 0, 0) + nl.attr(nl.IFLA_MTU, b"\1")),         # a 1-byte u32
    (nl.decode_addr, nl._IFADDR.pack(socket.AF_INET, 24, 0, 0, 1) + nl.attr(nl.IFA_LOCAL, b"\1\2\3")),
    (nl.decode_addr, nl._IFADDR.pack(99, 24, 0, 0, 1) + nl.attr(nl.IFA_LOCAL, b"\1\2\3\4")),  # unknown family
    (nl.decode_route, nl._RTMSG.pack(socket.AF_INET6, 64, 0, 0, 254, 4, 0, 1, 0) + nl.attr(nl.RTA_DST, b"\1" * 4)),
    (nl.decode_route, b"\2\0"),
])
def test_malformed_messages_are_named(decode: object, msg: bytes) -> None:
    with pytest.raises(nl.MalformedMessage) as info:
        decode(msg)  # type: ignore[operator]
    assert info.value.code == "malformed"


def test_a_short_error_message_is_named() -> None:
    with pytest.raises(nl.MalformedMessage, match="error/ack"):
        nl.Netlink._decode_error(0, memoryview(b"\1\2"))
    # an ack with TLVs whose echoed-length field points past the end carries no text, and is no crash either
    assert nl.Netlink._decode_error(nl.NLM_F_ACK_TLVS, memoryview(struct.pack("=iI", -5, 1 << 30))) == (5, None)


def test_the_real_kernels_messages_still_decode() -> None:
    with nl.Netlink() as sock:
        links = sock.links()
        assert any(link.name == "lo" and link.arphrd == nl.ARPHRD_LOOPBACK for link in links)
        assert all(isinstance(a.ip, str) for a in sock.addresses())
        sock.routes()
