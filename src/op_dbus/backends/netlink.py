"""A lean rtnetlink client: links, addresses and routes over one NETLINK_ROUTE socket, batched, with extended acks.

The kernel handles rtnetlink requests in the context of the sending task, so by the time `send`
returns every answer is already queued on the socket: calls here block only on the kernel itself,
never on another process, which is why this client is synchronous and cheap to call from a
coroutine. Many requests go out in one `send` and their acks are read back in bulk; that, and
decoding only the attributes the callers use, is what makes it faster than `ip -batch` and `ip -j`.

A socket opened for a network namespace stays in it (the namespace is picked when the socket is
created), so one `Netlink` per namespace is all the targeting there is.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import fcntl
import functools
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from op_dbus.errors import BackendError, InvalidInput, PermissionDenied, ServiceUnavailable

# --- protocol constants (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h) ---
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

NLMSG_ERROR = 2
NLMSG_DONE = 3

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34

IFF_UP = 0x1
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_EXT_MASK = 29
IFLA_LINK_NETNSID = 37
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_INFO_SLAVE_KIND = 4
RTEXT_FILTER_SKIP_STATS = 1 << 3
VETH_INFO_PEER = 1
IFLA_VXLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL = 1, 2, 3, 4
IFLA_VXLAN_PORT, IFLA_VXLAN_GROUP6, IFLA_VXLAN_LOCAL6 = 15, 16, 17
IFLA_MACVLAN_MODE = 1
IFLA_MACVLAN_FLAGS = 2
MACVLAN_FLAG_NOPROMISC = 1
IFLA_VLAN_ID = 1
IFLA_BOND_MODE = 1
IFLA_INFO_SLAVE_DATA = 5
# linux/if_link.h IFLA_BR_* and IFLA_BRPORT_*: name -> (attribute, struct format). Times are in hundredths of a second.
BRIDGE_ATTRS: dict[str, tuple[int, str]] = {
    "forward_delay": (1, "=I"), "hello_time": (2, "=I"), "max_age": (3, "=I"), "ageing_time": (4, "=I"),
    "stp_state": (5, "=I"), "priority": (6, "=H"), "group_fwd_mask": (9, "=H"), "mcast_snooping": (23, "=B"),
}
BRIDGE_PORT_ATTRS: dict[str, tuple[int, str]] = {"priority": (2, "=H"), "cost": (3, "=I"), "mode": (4, "=B")}

IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
IFA_F_PERMANENT = 0x80

RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_METRICS, RTA_TABLE = 1, 4, 5, 6, 7, 8, 15
# RTAX_* inside RTA_METRICS (linux/rtnetlink.h), each a u32.
ROUTE_METRICS = {"mtu": 2, "cwnd": 7, "advmss": 8, "initcwnd": 11, "initrwnd": 14, "quickack": 15}
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
RTPROT_KERNEL = 2
RTPROT_BOOT = 3
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT = 6, 7, 8
ROUTE_TYPES = {"unicast": RTN_UNICAST, "blackhole": RTN_BLACKHOLE, "unreachable": RTN_UNREACHABLE,
               "prohibit": RTN_PROHIBIT}

MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}
BOND_MODES = {"balance-rr": 0, "active-backup": 1, "balance-xor": 2, "broadcast": 3, "802.3ad": 4,
              "balance-tlb": 5, "balance-alb": 6}

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLA = struct.Struct("=HH")
_U32 = struct.Struct("=I")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


# --- attribute encoding ---

_P = ParamSpec("_P")
_T = TypeVar("_T")


def encoder(func: Callable[_P, _T]) -> Callable[_P, _T]:
    """Give a value that does not fit its wire field (a u32 metric of 2**40, a u16 port of 70000) as bad input.

    Callers validate first; this is the codec's own guarantee that struct's exceptions never escape it.
    """

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return func(*args, **kwargs)
        except (struct.error, OverflowError) as exc:
            raise InvalidInput(f"netlink {func.__name__}: a value does not fit its field ({exc})") from exc

    return wrapper


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return _NLA.pack(n, kind) + data + b"\0" * (_align(n) - n)


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def nested(kind: int, *parts: bytes) -> bytes:
    return attr(kind | 0x8000, b"".join(parts))


def parse_attrs(buf: bytes | memoryview, offset: int, end: int) -> dict[int, memoryview]:
    """Attributes of one level, type -> payload (the nested flag is masked off)."""
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    out: dict[int, memoryview] = {}
    unpack = _NLA.unpack_from
    while offset + 4 <= end:
        n, kind = unpack(mv, offset)
        if n < 4:
            break
        out[kind & 0x3FFF] = mv[offset + 4:offset + n]
        offset += (n + 3) & ~3
    return out


def _cstr(v: memoryview) -> str:
    return bytes(v).split(b"\0", 1)[0].decode(errors="replace")


def _u32(v: memoryview) -> int:
    return int(_U32.unpack_from(v)[0])


def mac_str(b: bytes | memoryview) -> str:
    return ":".join(f"{x:02x}" for x in bytes(b))


def mac_bytes(s: str) -> bytes:
    try:
        return bytes(int(x, 16) for x in s.split(":"))
    except ValueError as exc:
        raise InvalidInput(f"invalid MAC address {s!r}") from exc


def _ip_bytes(ip: str) -> tuple[int, bytes]:
    a = ipaddress.ip_address(ip)
    return (socket.AF_INET if a.version == 4 else socket.AF_INET6), a.packed


def _ip_str(family: int, b: memoryview) -> str:
    return socket.inet_ntop(family, bytes(b))


# --- decoded objects ---

@dataclass
class Link:
    index: int
    name: str
    kind: str | None  # IFLA_INFO_KIND: veth, bridge, vxlan, tun, openvswitch ... None for plain NICs
    up: bool
    mtu: int
    mac: str | None
    master: int = 0
    link: int = 0  # IFLA_LINK: veth peer / lower device index
    link_netnsid: int | None = None  # set when IFLA_LINK refers to another namespace
    arphrd: int = ARPHRD_ETHER
    info: dict[str, Any] = field(default_factory=dict)  # decoded kind-specific data


@dataclass
class Addr:
    family: int
    index: int
    ip: str
    prefix: int
    flags: int
    scope: int


@dataclass
class Route:
    family: int
    dst: str | None  # None: the default route
    dst_len: int
    table: int
    protocol: int
    scope: int
    type: int
    gateway: str | None = None
    oif: int = 0
    priority: int = 0
    prefsrc: str | None = None
    metrics: dict[str, int] = field(default_factory=dict)  # the ROUTE_METRICS the kernel reports for it


# How long a batch or a dump may wait for the kernel in all (it answers in the sending task's context, so only
# a lost reply or a huge dump comes near this).
DEFAULT_TIMEOUT = 30.0
# Requests in flight at once; their replies must fit the receive buffer (see `size_receive_buffer`).
BATCH_WINDOW = 256
# Asked for with SO_RCVBUFFORCE (CAP_NET_ADMIN): room for dumps of tens of thousands of objects and a full
# window of link replies. Without the capability, SO_RCVBUF gets what net.core.rmem_max allows.
RECEIVE_BUFFER = 8 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def size_receive_buffer(sock: socket.socket, size: int = RECEIVE_BUFFER) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class NetlinkOverrun(BackendError):
    """The kernel dropped replies because the socket's receive buffer was full (ENOBUFS)."""

    def __init__(self) -> None:
        super().__init__("netlink: the kernel dropped replies (receive buffer full, ENOBUFS); the outcome of "
                         "some requests is unknown", code="ENOBUFS",
                         hint="the state is re-read to find out what took effect")
        self.replies: list[Reply] = []


class NetlinkError(BackendError):
    """The kernel refused a request; `errno` and the extended-ack text (if any) are kept."""

    def __init__(self, message: str, *, errno: int, ext: str | None = None, hint: str | None = None) -> None:
        # Python names errno 95 ENOTSUP; the kernel and iproute2 say EOPNOTSUPP.
        name = "EOPNOTSUPP" if errno == errno_mod.EOPNOTSUPP else errno_mod.errorcode.get(errno, str(errno))
        super().__init__(message, hint=hint, code=name)
        self.errno = errno
        self.ext = ext


@dataclass
class Reply:
    """The outcome of one request in a batch: 0 or an errno, the extended-ack message, and any data messages."""

    error: int = 0
    ext: str | None = None
    messages: list[tuple[int, bytes]] = field(default_factory=list)
    done: bool = False

    def describe(self) -> str:
        text = os.strerror(self.error)
        return f"{text} ({self.ext})" if self.ext else text


# --- message builders (each returns (type, flags, body)) ---

Request = tuple[int, int, bytes]


@encoder
def link_get(name: str) -> Request:
    return RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, _IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name) + attr_u32(
        IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)


@encoder
def link_set(name: str, *, index: int = 0, up: bool | None = None, mtu: int | None = None, mac: str | None = None,
             master: int | None = None) -> Request:
    flags = change = 0
    if up is not None:
        change = IFF_UP
        flags = IFF_UP if up else 0
    body = _IFINFO.pack(0, 0, index, flags, change)
    if not index:
        body += attr_str(IFLA_IFNAME, name)
    if mtu is not None:
        body += attr_u32(IFLA_MTU, mtu)
    if mac is not None:
        body += attr(IFLA_ADDRESS, mac_bytes(mac))
    if master is not None:
        body += attr_u32(IFLA_MASTER, master)
    return RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body


@encoder
def link_add(name: str, kind: str, *, data: bytes = b"", link: int = 0, mtu: int | None = None, mac: str | None = None,
             up: bool = False, master: int = 0) -> Request:
    """Create `name` of `kind`; `data` is the already encoded IFLA_INFO_DATA payload."""
    body = _IFINFO.pack(0, 0, 0, IFF_UP if up else 0, IFF_UP if up else 0) + attr_str(IFLA_IFNAME, name)
    if link:
        body += attr_u32(IFLA_LINK, link)
    if mtu is not None:
        body += attr_u32(IFLA_MTU, mtu)
    if mac is not None:
        body += attr(IFLA_ADDRESS, mac_bytes(mac))
    if master:
        body += attr_u32(IFLA_MASTER, master)
    info = attr_str(IFLA_INFO_KIND, kind)
    if data:
        info += nested(IFLA_INFO_DATA, data)
    body += nested(IFLA_LINKINFO, info)
    return RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body


@encoder
def veth_data(peer: str, *, peer_netns_fd: int | None = None, peer_mtu: int | None = None) -> bytes:
    inner = _IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, peer)
    if peer_netns_fd is not None:
        inner += attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
    if peer_mtu is not None:
        inner += attr_u32(IFLA_MTU, peer_mtu)
    return nested(VETH_INFO_PEER, inner)


@encoder
def vxlan_data(vni: int, *, remote: str | None = None, local: str | None = None, link: int = 0,
               port: int | None = None) -> bytes:
    out = attr_u32(IFLA_VXLAN_ID, vni)
    if remote:
        fam, packed = _ip_bytes(remote)
        out += attr(IFLA_VXLAN_GROUP if fam == socket.AF_INET else IFLA_VXLAN_GROUP6, packed)
    if local:
        fam, packed = _ip_bytes(local)
        out += attr(IFLA_VXLAN_LOCAL if fam == socket.AF_INET else IFLA_VXLAN_LOCAL6, packed)
    if link:
        out += attr_u32(IFLA_VXLAN_LINK, link)
    if port is not None:
        out += attr(IFLA_VXLAN_PORT, struct.pack("!H", port))
    return out


@encoder
def _knobs(table: dict[str, tuple[int, str]], values: dict[str, int]) -> bytes:
    return b"".join(attr(table[k][0], struct.pack(table[k][1], v)) for k, v in values.items())


def _knobs_decode(table: dict[str, tuple[int, str]], d: dict[int, memoryview]) -> dict[str, int]:
    out = {}
    for name, (kind, fmt) in table.items():
        if kind in d and len(d[kind]) >= struct.calcsize(fmt):
            out[name] = int(struct.unpack_from(fmt, d[kind])[0])
    return out


@encoder
def bridge_data(values: dict[str, int]) -> bytes:
    """IFLA_INFO_DATA of a bridge: `values` keyed as BRIDGE_ATTRS."""
    return _knobs(BRIDGE_ATTRS, values)


@encoder
def link_set_info(name: str, kind: str, data: bytes = b"", *, port_kind: str | None = None,
                  port_data: bytes = b"") -> Request:
    """Change kind-specific settings of an existing link (IFLA_INFO_DATA), or of its role as a port (SLAVE_DATA)."""
    body = _IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name)
    info = b""
    if data:
        info += attr_str(IFLA_INFO_KIND, kind) + nested(IFLA_INFO_DATA, data)
    if port_kind:
        info += attr_str(IFLA_INFO_SLAVE_KIND, port_kind) + nested(IFLA_INFO_SLAVE_DATA, port_data)
    body += nested(IFLA_LINKINFO, info)
    return RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body


@encoder
def bridge_port_data(values: dict[str, int]) -> bytes:
    """IFLA_INFO_SLAVE_DATA of a bridge port: `values` keyed as BRIDGE_PORT_ATTRS."""
    return _knobs(BRIDGE_PORT_ATTRS, values)


def link_del(name: str, index: int = 0) -> Request:
    body = _IFINFO.pack(0, 0, index, 0, 0) + (b"" if index else attr_str(IFLA_IFNAME, name))
    return RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, body


@encoder
def addr_req(add: bool, index: int, ip: str, prefix: int, *, flags: int = 0) -> Request:
    family, packed = _ip_bytes(ip)
    body = _IFADDR.pack(family, prefix, flags & 0xFF, 0, index) + attr(IFA_ADDRESS, packed)
    if family == socket.AF_INET:
        body += attr(IFA_LOCAL, packed)
    if flags > 0xFF:
        body += attr_u32(IFA_FLAGS, flags)
    if add:
        return RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body
    return RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, body


@encoder
def route_req(add: bool, dst: str | None, dst_len: int, *, family: int | None = None, gateway: str | None = None,
              oif: int = 0, priority: int | None = None, table: int = RT_TABLE_MAIN, protocol: int = RTPROT_STATIC,
              scope: int | None = None, rtype: int = RTN_UNICAST, prefsrc: str | None = None,
              metrics: dict[str, int] | None = None) -> Request:
    if family is None:
        family = _ip_bytes(dst)[0] if dst else _ip_bytes(gateway)[0] if gateway else socket.AF_INET
    if scope is None:
        scope = RT_SCOPE_UNIVERSE if gateway or rtype != RTN_UNICAST else RT_SCOPE_LINK
    body = _RTMSG.pack(family, dst_len, 0, 0, table if table < 256 else 252, protocol if add else 0,
                       scope if add else 255, rtype, 0)
    if dst:
        body += attr(RTA_DST, _ip_bytes(dst)[1])
    if gateway:
        body += attr(RTA_GATEWAY, _ip_bytes(gateway)[1])
    if oif:
        body += attr_u32(RTA_OIF, oif)
    if prefsrc:
        body += attr(RTA_PREFSRC, _ip_bytes(prefsrc)[1])
    if priority is not None:
        body += attr_u32(RTA_PRIORITY, priority)
    if table != RT_TABLE_MAIN:
        body += attr_u32(RTA_TABLE, table)
    if metrics:
        body += route_metrics(metrics)
    if add:
        return RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body
    return RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, body


@encoder
def route_metrics(values: dict[str, int]) -> bytes:
    """RTA_METRICS: the per-route TCP and path settings (`values` keyed as ROUTE_METRICS)."""
    return nested(RTA_METRICS, *(attr_u32(ROUTE_METRICS[k], v) for k, v in values.items()))


def decode_route_metrics(v: memoryview) -> dict[str, int]:
    found = parse_attrs(v, 0, len(v))
    return {k: _u32(found[n]) for k, n in ROUTE_METRICS.items() if n in found and len(found[n]) >= 4}


_Decoded = TypeVar("_Decoded")


class MalformedMessage(BackendError):
    """The kernel (or whatever answered on the socket) sent a message that does not decode."""


def _decoder(what: str) -> Callable[[Callable[[bytes], _Decoded]], Callable[[bytes], _Decoded]]:
    """A decoder that turns a short or malformed message into MalformedMessage instead of a stray exception."""

    def wrap(decode: Callable[[bytes], _Decoded]) -> Callable[[bytes], _Decoded]:
        @functools.wraps(decode)
        def checked(msg: bytes) -> _Decoded:
            try:
                return decode(msg)
            except (struct.error, ValueError, IndexError, KeyError, TypeError, OSError) as exc:
                raise MalformedMessage(f"a malformed {what} message ({len(msg)} bytes): {exc}",
                                       code="malformed") from None
        return checked

    return wrap


# --- policy routing rules (linux/fib_rules.h) ---

FRA_DST, FRA_SRC, FRA_IIFNAME, FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK, FRA_PROTOCOL = 1, 2, 3, 6, 10, 15, 16, 21
FR_ACT_TO_TBL = 1
RULE_ACTIONS = {"blackhole": 6, "unreachable": 7, "prohibit": 8}
_FIBRULE = struct.Struct("=BBBBBBBBI")


@dataclass
class Rule:
    family: int
    src: str | None
    src_len: int
    dst: str | None
    dst_len: int
    table: int
    action: int
    priority: int | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    iif: str | None = None
    protocol: int = 0


@encoder
def rule_req(add: bool, family: int, *, src: str | None = None, src_len: int = 0, dst: str | None = None,
             dst_len: int = 0, table: int = RT_TABLE_MAIN, action: int = FR_ACT_TO_TBL, priority: int | None = None,
             fwmark: int | None = None, fwmask: int | None = None, iif: str | None = None) -> Request:
    """RTM_NEWRULE / RTM_DELRULE: select by source, destination, mark and incoming interface; look up `table`."""
    body = _FIBRULE.pack(family, dst_len, src_len, 0, table if table < 256 else 252, 0, 0, action, 0)
    if src:
        body += attr(FRA_SRC, _ip_bytes(src)[1])
    if dst:
        body += attr(FRA_DST, _ip_bytes(dst)[1])
    if iif:
        body += attr_str(FRA_IIFNAME, iif)
    if priority is not None:
        body += attr_u32(FRA_PRIORITY, priority)
    if fwmark is not None:
        body += attr_u32(FRA_FWMARK, fwmark)
    if fwmask is not None:
        body += attr_u32(FRA_FWMASK, fwmask)
    if action == FR_ACT_TO_TBL:
        body += attr_u32(FRA_TABLE, table)
    if add:
        return RTM_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body
    return RTM_DELRULE, NLM_F_REQUEST | NLM_F_ACK, body


@_decoder("rtnetlink rule")
def decode_rule(msg: bytes) -> Rule:
    mv = memoryview(msg)
    family, dst_len, src_len, _tos, table, _r1, _r2, action, _flags = _FIBRULE.unpack_from(mv, 0)
    a = parse_attrs(mv, _FIBRULE.size, len(mv))
    return Rule(
        family=family,
        src=_ip_str(family, a[FRA_SRC]) if FRA_SRC in a else None, src_len=src_len,
        dst=_ip_str(family, a[FRA_DST]) if FRA_DST in a else None, dst_len=dst_len,
        table=_u32(a[FRA_TABLE]) if FRA_TABLE in a else table,
        action=action,
        priority=_u32(a[FRA_PRIORITY]) if FRA_PRIORITY in a else None,
        fwmark=_u32(a[FRA_FWMARK]) if FRA_FWMARK in a else None,
        fwmask=_u32(a[FRA_FWMASK]) if FRA_FWMASK in a else None,
        iif=_cstr(a[FRA_IIFNAME]) if FRA_IIFNAME in a else None,
        protocol=a[FRA_PROTOCOL][0] if FRA_PROTOCOL in a else 0,
    )


def dump_rules(sock: Netlink, family: int = 0) -> list[Rule]:
    return [decode_rule(m) for m in sock.dump(RTM_GETRULE, _FIBRULE.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))]


# --- decoders ---


@_decoder("rtnetlink link")
def decode_link(msg: bytes) -> Link:
    mv = memoryview(msg)
    _fam, arphrd, index, flags, _change = _IFINFO.unpack_from(mv, 0)
    a = parse_attrs(mv, _IFINFO.size, len(mv))
    kind = None
    info: dict[str, Any] = {}
    li = a.get(IFLA_LINKINFO)
    if li is not None:
        la = parse_attrs(li, 0, len(li))
        if IFLA_INFO_KIND in la:
            kind = _cstr(la[IFLA_INFO_KIND])
        data = la.get(IFLA_INFO_DATA)
        if data is not None and kind is not None:
            info = _decode_info(kind, parse_attrs(data, 0, len(data)))
        if IFLA_INFO_SLAVE_KIND in la:
            info["slave_kind"] = _cstr(la[IFLA_INFO_SLAVE_KIND])
            port = la.get(IFLA_INFO_SLAVE_DATA)
            if info["slave_kind"] == "bridge" and port is not None:
                info["bridge_port"] = _knobs_decode(BRIDGE_PORT_ATTRS, parse_attrs(port, 0, len(port)))
    return Link(
        index=index,
        name=_cstr(a[IFLA_IFNAME]) if IFLA_IFNAME in a else f"if{index}",
        kind=kind,
        up=bool(flags & IFF_UP),
        mtu=_u32(a[IFLA_MTU]) if IFLA_MTU in a else 0,
        mac=mac_str(a[IFLA_ADDRESS]) if IFLA_ADDRESS in a and len(a[IFLA_ADDRESS]) == 6 else None,
        master=_u32(a[IFLA_MASTER]) if IFLA_MASTER in a else 0,
        link=_u32(a[IFLA_LINK]) if IFLA_LINK in a else 0,
        link_netnsid=struct.unpack_from("=i", a[IFLA_LINK_NETNSID])[0] if IFLA_LINK_NETNSID in a else None,
        arphrd=arphrd,
        info=info,
    )


def _decode_info(kind: str, d: dict[int, memoryview]) -> dict[str, Any]:
    if kind == "vxlan":
        out: dict[str, Any] = {}
        if IFLA_VXLAN_ID in d:
            out["id"] = _u32(d[IFLA_VXLAN_ID])
        for key, a4, a6 in (("remote", IFLA_VXLAN_GROUP, IFLA_VXLAN_GROUP6), ("local", IFLA_VXLAN_LOCAL, IFLA_VXLAN_LOCAL6)):
            if a4 in d and bytes(d[a4]) != b"\0" * 4:
                out[key] = _ip_str(socket.AF_INET, d[a4])
            elif a6 in d and bytes(d[a6]) != b"\0" * 16:
                out[key] = _ip_str(socket.AF_INET6, d[a6])
        if IFLA_VXLAN_LINK in d:
            out["link"] = _u32(d[IFLA_VXLAN_LINK])
        if IFLA_VXLAN_PORT in d:
            out["port"] = struct.unpack("!H", d[IFLA_VXLAN_PORT])[0]
        return out
    if kind in ("macvlan", "macvtap") and IFLA_MACVLAN_MODE in d:
        mode = _u32(d[IFLA_MACVLAN_MODE])
        flags = struct.unpack_from("=H", d[IFLA_MACVLAN_FLAGS])[0] if IFLA_MACVLAN_FLAGS in d else 0
        return {"mode": next((k for k, v in MACVLAN_MODES.items() if v == mode), str(mode)),
                "promiscuous": not flags & MACVLAN_FLAG_NOPROMISC}
    if kind == "bridge":
        return {"bridge": _knobs_decode(BRIDGE_ATTRS, d)}
    if kind == "vlan" and IFLA_VLAN_ID in d:
        return {"id": struct.unpack_from("=H", d[IFLA_VLAN_ID])[0]}
    if kind == "bond" and IFLA_BOND_MODE in d:
        mode = d[IFLA_BOND_MODE][0]
        return {"mode": next((k for k, v in BOND_MODES.items() if v == mode), str(mode))}
    return {}


@_decoder("rtnetlink address")
def decode_addr(msg: bytes) -> Addr:
    mv = memoryview(msg)
    family, prefix, flags, scope, index = _IFADDR.unpack_from(mv, 0)
    a = parse_attrs(mv, _IFADDR.size, len(mv))
    raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
    if IFA_FLAGS in a:
        flags = _u32(a[IFA_FLAGS])
    return Addr(family=family, index=index, ip=_ip_str(family, raw) if raw is not None else "", prefix=prefix,
                flags=flags, scope=scope)


@_decoder("rtnetlink route")
def decode_route(msg: bytes) -> Route:
    mv = memoryview(msg)
    family, dst_len, _src_len, _tos, table, protocol, scope, rtype, _flags = _RTMSG.unpack_from(mv, 0)
    a = parse_attrs(mv, _RTMSG.size, len(mv))
    return Route(
        family=family,
        dst=_ip_str(family, a[RTA_DST]) if RTA_DST in a else None,
        dst_len=dst_len,
        table=_u32(a[RTA_TABLE]) if RTA_TABLE in a else table,
        protocol=protocol,
        scope=scope,
        type=rtype,
        gateway=_ip_str(family, a[RTA_GATEWAY]) if RTA_GATEWAY in a else None,
        oif=_u32(a[RTA_OIF]) if RTA_OIF in a else 0,
        priority=_u32(a[RTA_PRIORITY]) if RTA_PRIORITY in a else 0,
        prefsrc=_ip_str(family, a[RTA_PREFSRC]) if RTA_PREFSRC in a else None,
        metrics=decode_route_metrics(a[RTA_METRICS]) if RTA_METRICS in a else {},
    )


# --- namespaces ---

NS_GET_NSTYPE = 0xB703  # ioctl on a namespace fd: its CLONE_NEW* type (ENOTTY on any other file)
NAME_MAX = 255


def netns_name_problem(netns: str) -> str | None:
    """Why `netns` is not a namespace name `ip netns` accepts (nor an absolute path), or None when it is fine."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in netns):
        return f"network namespace {netns!r}: control characters are not allowed in a name"
    if netns.startswith("/"):
        return None  # a namespace file by path (/proc/PID/ns/net); checked to be one when opened
    if not netns or netns in (".", "..") or "/" in netns or len(netns.encode()) > NAME_MAX:
        return (f"network namespace {netns!r} is not a valid name (as for `ip netns`: 1 to {NAME_MAX} bytes, "
                "no '/', not '.' or '..'), nor an absolute path")
    return None


def netns_path(netns: str) -> str:
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


def open_netns(netns: str) -> int:
    """An fd on the named namespace (`/run/netns/NAME`, or a path such as `/proc/PID/ns/net`).

    The name is checked as `ip netns` checks it, and the file opened must be a network namespace: a name such as
    `../../etc/passwd` is invalid input, not a failed setns() later.
    """
    problem = netns_name_problem(netns)
    if problem:
        raise InvalidInput(problem, hint="name a namespace of /run/netns (`ip netns list`)")
    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise InvalidInput(f"network namespace {netns!r} does not exist ({path})",
                           hint="create it with `ip netns add NAME`, or fix the netns setting") from exc
    except OSError as exc:
        raise InvalidInput(f"network namespace {netns!r}: cannot open {path}: {exc.strerror or exc}") from exc
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = None
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise InvalidInput(f"network namespace {netns!r}: {path} is not a network namespace",
                           hint="name a namespace of /run/netns (`ip netns list`)")
    return fd


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace `fd` refers to."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _new_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)


def socket_in(netns: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket bound to `netns` (None: this process's namespace).

    setns() moves only the calling thread, and only for the instant the socket is created.
    """
    if netns is None:
        return _new_socket()
    target = open_netns(netns)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            setns(target)
        except PermissionError as exc:
            raise PermissionDenied(f"cannot enter network namespace {netns!r}: {exc}",
                                   hint="op-dbus needs CAP_SYS_ADMIN to target another namespace") from exc
        try:
            return _new_socket()
        finally:
            setns(home)
    finally:
        os.close(target)
        os.close(home)


def socket_in_private_netns() -> socket.socket:
    """A socket in a new, empty namespace that lives only as long as the socket: for probing kernel features."""
    result: list[Any] = []

    def run() -> None:
        # unshare() on a short-lived thread: the thread's namespace changes, the process's does not.
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            result.append(_new_socket())
        except OSError as exc:
            result.append(exc)

    t = threading.Thread(target=run, name="netns-probe")
    t.start()
    t.join()
    if isinstance(result[0], OSError):
        raise result[0]
    return result[0]  # type: ignore[no-any-return]


# --- the client ---

class Netlink:
    """One rtnetlink socket (in one namespace): batched requests, dumps, and typed reads."""

    def __init__(self, netns: str | None = None, *, sock: socket.socket | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.netns = netns
        self.timeout = timeout
        try:
            self.sock = sock or socket_in(netns)
        except OSError as exc:
            raise ServiceUnavailable(f"cannot open a netlink socket: {exc}") from exc
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        # Acks without the echoed request keep bulk replies small.
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        size_receive_buffer(self.sock)
        self.sock.bind((0, 0))
        self.window = BATCH_WINDOW
        self.fit_window()
        self.seq = 0
        self._buf = bytearray(1 << 18)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _frame(self, req: Request) -> tuple[int, bytes]:
        self.seq += 1
        mtype, flags, body = req
        return self.seq, _HDR.pack(16 + len(body), mtype, flags, self.seq, 0) + body

    def _read(self, deadline: float | None = None) -> Iterator[tuple[int, int, int, memoryview]]:
        """One recv: (type, flags, seq, payload) for every message in it.

        Waits until `deadline` (monotonic; default: this client's timeout from now) and raises BackendError
        past it, so no caller can hang on a reply that will never come. ENOBUFS (the kernel dropped replies
        because the receive buffer was full) is raised as NetlinkOverrun.
        """
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise BackendError(f"netlink: no reply from the kernel within {self.timeout:g} s", code="ETIMEDOUT")
        self.sock.settimeout(left)
        try:
            n = self.sock.recv_into(self._buf)
        except TimeoutError:
            raise BackendError(f"netlink: no reply from the kernel within {self.timeout:g} s",
                               code="ETIMEDOUT") from None
        except OSError as exc:
            if exc.errno == errno_mod.ENOBUFS:
                raise NetlinkOverrun() from None
            raise
        mv = memoryview(self._buf)[:n]
        off = 0
        while off + 16 <= n:
            length, mtype, flags, seq, _pid = _HDR.unpack_from(mv, off)
            if length < 16:
                break
            yield mtype, flags, seq, mv[off + 16:off + length]
            off += (length + 3) & ~3

    @staticmethod
    def _decode_error(flags: int, payload: memoryview) -> tuple[int, str | None]:
        try:
            return Netlink._decode_error_body(flags, payload)
        except (struct.error, ValueError, IndexError) as exc:
            raise MalformedMessage(f"a malformed netlink error/ack message ({len(payload)} bytes): {exc}",
                                   code="malformed") from None

    @staticmethod
    def _decode_error_body(flags: int, payload: memoryview) -> tuple[int, str | None]:
        err = -struct.unpack_from("=i", payload, 0)[0]
        ext = None
        if flags & NLM_F_ACK_TLVS:
            # With NETLINK_CAP_ACK the echoed request is only its 16-byte header.
            off = 4 + 16
            if not flags & 0x100:  # NLM_F_CAPPED unset: the whole request was echoed
                off = 4 + struct.unpack_from("=I", payload, 4)[0]
            tl = parse_attrs(payload, _align(off), len(payload))
            if NLMSGERR_ATTR_MSG in tl:
                ext = _cstr(tl[NLMSGERR_ATTR_MSG])
        return err, ext

    def fit_window(self) -> None:
        """Fewer requests in flight when the receive buffer is small (about 2 KiB of it per reply, with margin)."""
        room = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.window = max(1, min(BATCH_WINDOW, room // 2048))

    def batch(self, requests: Iterable[Request], *, window: int | None = None) -> list[Reply]:
        """Send every request and collect each one's data and ack, in order.

        At most `window` requests are outstanding at a time: the socket's receive buffer holds their
        replies (an ack costs the buffer about 1 KiB whatever its length), so a batch of any size never
        overruns it. The whole batch shares one deadline. If the kernel still dropped replies (ENOBUFS),
        the replies read so far are kept in `NetlinkOverrun.replies` (unanswered ones have `done` unset:
        their outcome is unknown and the caller must re-read the state).
        """
        framed = [self._frame(r) for r in requests]
        if not framed:
            return []
        first = framed[0][0]
        replies = [Reply() for _ in framed]
        deadline = time.monotonic() + self.timeout
        window = window or self.window
        sent = answered = 0
        try:
            while answered < len(framed):
                if sent < len(framed) and sent - answered < window:
                    # Fill the window in as few writes as fit (a write is at most 64 KiB here).
                    chunk: list[bytes] = []
                    size = 0
                    while sent < len(framed) and sent - answered < window:
                        data = framed[sent][1]
                        if size + len(data) > 65536 and chunk:
                            break
                        chunk.append(data)
                        size += len(data)
                        sent += 1
                    self.sock.send(b"".join(chunk))
                    if sent < len(framed) and sent - answered < window:
                        continue  # the 64 KiB write was full before the window
                for mtype, flags, seq, payload in self._read(deadline):
                    i = seq - first
                    if not 0 <= i < len(replies) or replies[i].done:
                        continue
                    if mtype == NLMSG_ERROR:
                        replies[i].error, replies[i].ext = self._decode_error(flags, payload)
                        replies[i].done = True
                        answered += 1
                    elif mtype == NLMSG_DONE:
                        replies[i].done = True
                        answered += 1
                    else:
                        replies[i].messages.append((mtype, bytes(payload)))
        except NetlinkOverrun as exc:
            self._drain()
            exc.replies = replies
            raise
        return replies

    def _drain(self) -> None:
        """Discard whatever replies are still queued (after an overrun they can no longer be matched reliably)."""
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    if not self.sock.recv_into(self._buf):
                        break
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno != errno_mod.ENOBUFS:
                        break
        finally:
            self.sock.setblocking(True)

    def request(self, req: Request, what: str) -> Reply:
        reply = self.batch([req])[0]
        if reply.error:
            raise error_for(reply, what)
        return reply

    def dump(self, mtype: int, body: bytes) -> list[bytes]:
        seq, data = self._frame((mtype, NLM_F_REQUEST | NLM_F_DUMP, body))
        self.sock.send(data)
        out: list[bytes] = []
        deadline = time.monotonic() + self.timeout
        while True:
            for rtype, flags, rseq, payload in self._read(deadline):
                if rseq != seq:
                    continue
                if rtype == NLMSG_DONE:
                    return out
                if rtype == NLMSG_ERROR:
                    err, ext = self._decode_error(flags, payload)
                    if err:
                        raise error_for(Reply(err, ext), "dump")
                    return out
                out.append(bytes(payload))

    def links(self) -> list[Link]:
        body = _IFINFO.pack(0, 0, 0, 0, 0) + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
        return [decode_link(m) for m in self.dump(RTM_GETLINK, body)]

    def addresses(self, family: int = 0) -> list[Addr]:
        return [decode_addr(m) for m in self.dump(RTM_GETADDR, _IFADDR.pack(family, 0, 0, 0, 0))]

    def routes(self, family: int = 0) -> list[Route]:
        return [decode_route(m) for m in self.dump(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))]

    def link_by_name(self, name: str) -> Link | None:
        reply = self.batch([link_get(name)])[0]
        if reply.error == errno_mod.ENODEV:
            return None
        if reply.error:
            raise error_for(reply, f"read link {name}")
        return decode_link(reply.messages[0][1]) if reply.messages else None

    def indexes(self, names: Iterable[str]) -> dict[str, int]:
        """name -> ifindex for the names that exist, in one batch."""
        names = list(names)
        out: dict[str, int] = {}
        for name, reply in zip(names, self.batch([link_get(n) for n in names]), strict=True):
            if not reply.error and reply.messages:
                out[name] = _IFINFO.unpack_from(reply.messages[0][1], 0)[2]
        return out


# --- change notifications (multicast groups) ---

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
WATCH_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE


class Monitor:
    """A non-blocking rtnetlink socket subscribed to link, address and route notifications (IPv4 and IPv6).

    `read()` drains what is queued: (message type, payload, sender port id) triples, or None when the kernel
    dropped notifications because the socket's buffer overflowed (ENOBUFS): the caller must then re-read
    everything. The port id of a notification is that of the socket whose request caused it (0 for the
    kernel's own changes); for most tools (`ip`, ...) it is their pid.
    """

    def __init__(self, netns: str | None = None, groups: int = WATCH_GROUPS) -> None:
        try:
            self.sock = socket_in(netns)
            size_receive_buffer(self.sock)
            self.sock.bind((0, groups))
        except OSError as exc:
            raise ServiceUnavailable(f"cannot subscribe to rtnetlink notifications: {exc}") from exc
        self.sock.setblocking(False)
        self._buf = bytearray(1 << 16)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def read(self) -> list[tuple[int, bytes, int]] | None:
        out: list[tuple[int, bytes, int]] = []
        overflow = False
        while True:
            try:
                n = self.sock.recv_into(self._buf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno_mod.ENOBUFS:
                    overflow = True
                    continue
                raise ServiceUnavailable(f"rtnetlink notifications failed: {exc}") from exc
            mv = memoryview(self._buf)[:n]
            off = 0
            while off + 16 <= n:
                length, mtype, _flags, _seq, portid = _HDR.unpack_from(mv, off)
                if length < 16:
                    break
                out.append((mtype, bytes(mv[off + 16:off + length]), portid))
                off += (length + 3) & ~3
        return None if overflow else out


NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_NAME = 2


def genl_family_exists(name: str) -> bool:
    """Whether the kernel registered the generic netlink family `name` (e.g. `ovs_datapath`)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
    with Netlink(sock=sock) as gen:
        body = struct.pack("=BBH", CTRL_CMD_GETFAMILY, 1, 0) + attr_str(CTRL_ATTR_FAMILY_NAME, name)
        reply = gen.batch([(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, body)])[0]
    return reply.error == 0 and bool(reply.messages)


def error_for(reply: Reply, what: str) -> BackendError:
    """A kernel error as the project's error: the errno name, strerror, and the kernel's extended-ack text."""
    msg = f"{what}: {reply.describe()}"
    if reply.error == errno_mod.EPERM:
        return PermissionDenied(msg, hint="op-dbus needs CAP_NET_ADMIN (run as root)", code="EPERM")
    return NetlinkError(msg, errno=reply.error, ext=reply.ext)
