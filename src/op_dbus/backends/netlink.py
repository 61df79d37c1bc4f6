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
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

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
IFLA_VLAN_ID = 1
IFLA_BOND_MODE = 1

IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
IFA_F_PERMANENT = 0x80

RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
RTPROT_KERNEL = 2
RTPROT_BOOT = 3
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1

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


def link_get(name: str) -> Request:
    return RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, _IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name) + attr_u32(
        IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)


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


def veth_data(peer: str, *, peer_netns_fd: int | None = None, peer_mtu: int | None = None) -> bytes:
    inner = _IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, peer)
    if peer_netns_fd is not None:
        inner += attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
    if peer_mtu is not None:
        inner += attr_u32(IFLA_MTU, peer_mtu)
    return nested(VETH_INFO_PEER, inner)


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


def link_del(name: str, index: int = 0) -> Request:
    body = _IFINFO.pack(0, 0, index, 0, 0) + (b"" if index else attr_str(IFLA_IFNAME, name))
    return RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, body


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


def route_req(add: bool, dst: str | None, dst_len: int, *, family: int | None = None, gateway: str | None = None,
              oif: int = 0, priority: int | None = None, table: int = RT_TABLE_MAIN, protocol: int = RTPROT_STATIC,
              scope: int | None = None) -> Request:
    if family is None:
        family = _ip_bytes(dst)[0] if dst else _ip_bytes(gateway)[0] if gateway else socket.AF_INET
    if scope is None:
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
    body = _RTMSG.pack(family, dst_len, 0, 0, table if table < 256 else 252, protocol if add else 0,
                       scope if add else 255, RTN_UNICAST, 0)
    if dst:
        body += attr(RTA_DST, _ip_bytes(dst)[1])
    if gateway:
        body += attr(RTA_GATEWAY, _ip_bytes(gateway)[1])
    if oif:
        body += attr_u32(RTA_OIF, oif)
    if priority is not None:
        body += attr_u32(RTA_PRIORITY, priority)
    if table != RT_TABLE_MAIN:
        body += attr_u32(RTA_TABLE, table)
    if add:
        return RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body
    return RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, body


# --- decoders ---

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
        return {"mode": next((k for k, v in MACVLAN_MODES.items() if v == mode), str(mode))}
    if kind == "vlan" and IFLA_VLAN_ID in d:
        return {"id": struct.unpack_from("=H", d[IFLA_VLAN_ID])[0]}
    if kind == "bond" and IFLA_BOND_MODE in d:
        mode = d[IFLA_BOND_MODE][0]
        return {"mode": next((k for k, v in BOND_MODES.items() if v == mode), str(mode))}
    return {}


def decode_addr(msg: bytes) -> Addr:
    mv = memoryview(msg)
    family, prefix, flags, scope, index = _IFADDR.unpack_from(mv, 0)
    a = parse_attrs(mv, _IFADDR.size, len(mv))
    raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
    if IFA_FLAGS in a:
        flags = _u32(a[IFA_FLAGS])
    return Addr(family=family, index=index, ip=_ip_str(family, raw) if raw is not None else "", prefix=prefix,
                flags=flags, scope=scope)


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
    )


# --- namespaces ---

def netns_path(netns: str) -> str:
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


def open_netns(netns: str) -> int:
    """An fd on the named namespace (`/run/netns/NAME`, or a path such as `/proc/PID/ns/net`)."""
    path = netns_path(netns)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise InvalidInput(f"network namespace {netns!r} does not exist ({path})",
                           hint="create it with `ip netns add NAME`, or fix the netns setting") from exc


def _setns(fd: int) -> None:
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
            _setns(target)
        except PermissionError as exc:
            raise PermissionDenied(f"cannot enter network namespace {netns!r}: {exc}",
                                   hint="op-dbus needs CAP_SYS_ADMIN to target another namespace") from exc
        try:
            return _new_socket()
        finally:
            _setns(home)
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
