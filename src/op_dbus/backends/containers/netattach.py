"""Joining a container to a bridge by name: a named network namespace, a veth pair, addresses; over rtnetlink.

The namespace is made by op-dbus (`/run/netns/op-dbus-NAME`, as `ip netns add` would) and handed to the
container manager, which runs the container inside it. The veth's host end stays in op-dbus's own network
namespace with the bridge as its master; the other end is `eth0` inside. Nothing here runs `ip`: links and
addresses are rtnetlink requests on a socket opened in the namespace they concern.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from op_dbus.backends.containers import UnsupportedFeature
from op_dbus.errors import BackendError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR = 16, 17, 18, 20, 22
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 3, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP = 1
PEER = "eth0"

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(container: str) -> Path:
    return NETNS_DIR / f"op-dbus-{container}"


def host_veth(container: str) -> str:
    """The host end's name: derived from the container's name, within the kernel's 15 characters."""
    return "opd" + hashlib.sha256(container.encode()).hexdigest()[:11]


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, flags, change)


def _attrs(data: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return out


class Netlink:
    """One rtnetlink socket; requests are answered in order, errors become OSError with the kernel's errno."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        self.seq += 1
        self.sock.send(struct.pack("=LHHLL", 16 + len(body), kind, flags | NLM_F_REQUEST, self.seq, 0) + body)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 16)
            pos = 0
            while pos + 16 <= len(data):
                length, mtype, _flags, seq, _pid = struct.unpack_from("=LHHLL", data, pos)
                payload = data[pos + 16:pos + length]
                pos += (length + 3) & ~3
                if seq != self.seq:
                    continue
                if mtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return replies
                if mtype == NLMSG_DONE:
                    return replies
                replies.append((mtype, payload))
                # a plain get is answered by one message; a dump ends with DONE, an acked request with ERROR 0
                if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                    return replies

    def index(self, name: str) -> int | None:
        try:
            (_, payload), *_ = self.request(RTM_GETLINK, 0, _ifinfo() + _attr(IFLA_IFNAME, name.encode() + b"\0"))
        except OSError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        return int(struct.unpack_from("=BxHiII", payload)[2])

    def link(self, index: int) -> dict[int, bytes]:
        (_, payload), *_ = self.request(RTM_GETLINK, 0, _ifinfo(index))
        return _attrs(payload[16:])

    def set_up(self, index: int) -> None:
        self.request(RTM_NEWLINK, NLM_F_ACK, _ifinfo(index, IFF_UP, IFF_UP))

    def delete(self, index: int) -> None:
        self.request(RTM_DELLINK, NLM_F_ACK, _ifinfo(index))

    def add_address(self, index: int, cidr: str) -> None:
        ip, _, prefix = cidr.partition("/")
        packed = socket.inet_aton(ip)
        body = struct.pack("=BBBBI", socket.AF_INET, int(prefix or 32), 0, 0, index)
        body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        self.request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    def addresses(self, index: int) -> list[str]:
        found = []
        for _, payload in self.request(RTM_GETADDR, NLM_F_DUMP, struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, 0)):
            family, prefix, _flags, _scope, ifindex = struct.unpack_from("=BBBBI", payload)
            attrs = _attrs(payload[8:])
            if family == socket.AF_INET and ifindex == index and IFA_LOCAL in attrs:
                found.append(f"{socket.inet_ntoa(attrs[IFA_LOCAL])}/{prefix}")
        return found


def _in_thread(fn: Callable[[], T]) -> T:
    """Run `fn` on a thread of its own: namespace switches (unshare, setns) stay with that thread and die with it."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append((True, fn()))
        except BaseException as e:
            result.append((False, e))

    thread = threading.Thread(target=run, name="op-dbus-netns")
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _inside(path: Path, fn: Callable[[Netlink], T]) -> T:
    """`fn` with a netlink socket that belongs to the namespace at `path`."""

    def run() -> T:
        fd = os.open(path, os.O_RDONLY)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), f"setns {path}")
        finally:
            os.close(fd)
        nl = Netlink()
        try:
            return fn(nl)
        finally:
            nl.close()

    return _in_thread(run)


def create_netns(path: Path) -> None:
    """A new, empty network namespace kept alive by a bind mount at `path` (what `ip netns add` makes)."""

    def run() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=False)
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        _check(_libc.mount(source, str(path).encode(), None, MS_BIND, None), f"bind mount onto {path}")

    try:
        _in_thread(run)
    except OSError:
        path.unlink(missing_ok=True)
        raise


def delete_netns(path: Path) -> None:
    if path.exists():
        _libc.umount2(str(path).encode(), MNT_DETACH)
        path.unlink(missing_ok=True)


def attach(container: str, bridge: str, addresses: list[str]) -> Path:
    """Make the container's namespace, a veth from `bridge` into it, and its addresses; return the namespace path."""
    nl = Netlink()
    try:
        master = nl.index(bridge)
        if master is None:
            raise BackendError(f"bridge {bridge} does not exist in this network namespace",
                               hint="create it first (the net plugin, applied before containers, does)")
        kind = _attrs(nl.link(master).get(IFLA_LINKINFO, b"")).get(IFLA_INFO_KIND, b"").rstrip(b"\0")
        if kind != b"bridge":
            raise UnsupportedFeature(f"{bridge} is not a Linux bridge ({kind.decode() or 'no link kind'}): a port of "
                                     "an OVS bridge is added through OVSDB; use an LXC container, or a Linux bridge")
        path = netns_path(container)
        if path.exists():
            delete_netns(path)
        create_netns(path)
        name = host_veth(container)
        try:
            old = nl.index(name)
            if old is not None:
                nl.delete(old)
            fd = os.open(path, os.O_RDONLY)
            try:
                peer = _ifinfo() + _attr(IFLA_IFNAME, PEER.encode() + b"\0") + _attr(IFLA_NET_NS_FD, struct.pack("=I", fd))
                info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer))
                body = (_ifinfo() + _attr(IFLA_IFNAME, name.encode() + b"\0") + _attr(IFLA_MASTER, struct.pack("=I", master))
                        + _attr(IFLA_LINKINFO, info))
                nl.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)
            finally:
                os.close(fd)
            index = nl.index(name)
            assert index is not None
            nl.set_up(index)

            def configure(inner: Netlink) -> None:
                lo, eth = inner.index("lo"), inner.index(PEER)
                assert lo is not None and eth is not None
                inner.set_up(lo)
                for cidr in addresses:
                    inner.add_address(eth, cidr)
                inner.set_up(eth)

            _inside(path, configure)
        except BaseException:
            detach(container)
            raise
        return path
    except OSError as e:
        raise BackendError(f"attaching {container} to {bridge}: {e.strerror or e}",
                           code=errno.errorcode.get(e.errno or 0)) from None
    finally:
        nl.close()


def detach(container: str) -> None:
    """Remove the container's veth and namespace (the container must be gone or about to be)."""
    nl = Netlink()
    try:
        index = nl.index(host_veth(container))
        if index is not None:
            nl.delete(index)
    finally:
        nl.close()
    delete_netns(netns_path(container))


def read(container: str) -> tuple[str | None, list[str]]:
    """The bridge the container's veth is on and the IPv4 addresses inside, as they are now."""
    path = netns_path(container)
    if not path.exists():
        return None, []
    nl = Netlink()
    try:
        index = nl.index(host_veth(container))
        bridge = None
        if index is not None:
            attrs = nl.link(index)
            if IFLA_MASTER in attrs:
                master = nl.link(struct.unpack("=I", attrs[IFLA_MASTER][:4])[0])
                bridge = master.get(IFLA_IFNAME, b"").rstrip(b"\0").decode() or None
    finally:
        nl.close()

    def inside(inner: Netlink) -> list[str]:
        eth = inner.index(PEER)
        return inner.addresses(eth) if eth is not None else []

    return bridge, _inside(path, inside)


def configure(netns: Path, interface: str, addresses: list[str]) -> None:
    """Bring `interface` (and loopback) up inside the namespace at `netns` and give it `addresses`."""

    def run(inner: Netlink) -> None:
        index, lo = inner.index(interface), inner.index("lo")
        if index is None:
            raise BackendError(f"no interface {interface} in the container's network namespace")
        if lo is not None:
            inner.set_up(lo)
        present = set(inner.addresses(index))
        for cidr in addresses:
            if cidr not in present:
                inner.add_address(index, cidr)
        inner.set_up(index)

    try:
        _inside(netns, run)
    except OSError as e:
        raise BackendError(f"configuring {interface} in {netns}: {e.strerror or e}",
                           code=errno.errorcode.get(e.errno or 0)) from None


def addresses_in(netns: Path, interface: str) -> list[str]:
    """The IPv4 addresses of `interface` inside the namespace at `netns` ([] when it is not there)."""

    def run(inner: Netlink) -> list[str]:
        index = inner.index(interface)
        return inner.addresses(index) if index is not None else []

    try:
        return _inside(netns, run)
    except OSError:
        return []
