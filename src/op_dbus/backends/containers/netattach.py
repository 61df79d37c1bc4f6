"""Joining a container to a bridge by name: a named network namespace, a veth pair, addresses; over rtnetlink.

The namespace is made by op-dbus (`/run/netns/op-dbus-NAME`, as `ip netns add` would) and handed to the
container manager, which runs the container inside it. The veth's host end stays in op-dbus's own network
namespace with the bridge as its master; the other end is `eth0` inside. Nothing here runs `ip`: links and
addresses are rtnetlink requests on a socket opened in the namespace they concern.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from op_dbus.backends import netlink
from op_dbus.backends.containers import UnsupportedFeature
from op_dbus.errors import BackendError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
PEER = "eth0"

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(container: str) -> Path:
    return NETNS_DIR / f"op-dbus-{container}"


def host_veth(container: str) -> str:
    """The host end's name: derived from the container's name, within the kernel's 15 characters."""
    return "opd" + hashlib.sha256(container.encode()).hexdigest()[:11]


def _index(nl: netlink.Netlink, name: str) -> int | None:
    link = nl.link_by_name(name)
    return link.index if link is not None else None


def _set_up(nl: netlink.Netlink, index: int) -> None:
    nl.request(netlink.link_set("", index=index, up=True), f"set link {index} up")


def _ipv4(nl: netlink.Netlink, index: int) -> list[str]:
    return [f"{a.ip}/{a.prefix}" for a in nl.addresses(socket.AF_INET) if a.index == index]


def _add_ipv4(nl: netlink.Netlink, index: int, cidr: str) -> None:
    ip, _, prefix = cidr.partition("/")
    nl.request(netlink.addr_req(True, index, ip, int(prefix or 32)), f"add address {cidr}")


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


def _inside(path: Path, fn: Callable[[netlink.Netlink], T]) -> T:
    """`fn` with a netlink socket that belongs to the namespace at `path`."""
    with netlink.Netlink(str(path)) as nl:
        return fn(nl)


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
    with netlink.Netlink() as nl:
        master = nl.link_by_name(bridge)
        if master is None:
            raise BackendError(f"bridge {bridge} does not exist in this network namespace",
                               hint="create it first (the net plugin, applied before containers, does)")
        if master.kind != "bridge":
            raise UnsupportedFeature(f"{bridge} is not a Linux bridge ({master.kind or 'no link kind'}): a port of "
                                     "an OVS bridge is added through OVSDB; use an LXC container, or a Linux bridge")
        path = netns_path(container)
        if path.exists():
            delete_netns(path)
        try:
            create_netns(path)
        except OSError as e:
            raise BackendError(f"attaching {container} to {bridge}: {e.strerror or e}") from None
        name = host_veth(container)
        try:
            old = _index(nl, name)
            if old is not None:
                nl.request(netlink.link_del(name, old), f"delete {name}")
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                nl.request(netlink.link_add(name, "veth", data=netlink.veth_data(PEER, peer_netns_fd=fd),
                                            master=master.index), f"attaching {container} to {bridge}")
            finally:
                os.close(fd)
            index = _index(nl, name)
            assert index is not None
            _set_up(nl, index)

            def configure(inner: netlink.Netlink) -> None:
                lo, eth = _index(inner, "lo"), _index(inner, PEER)
                assert lo is not None and eth is not None
                _set_up(inner, lo)
                for cidr in addresses:
                    _add_ipv4(inner, eth, cidr)
                _set_up(inner, eth)

            _inside(path, configure)
        except BaseException:
            detach(container)
            raise
        return path


def detach(container: str) -> None:
    """Remove the container's veth and namespace (the container must be gone or about to be)."""
    name = host_veth(container)
    with netlink.Netlink() as nl:
        index = _index(nl, name)
        if index is not None:
            nl.request(netlink.link_del(name, index), f"delete {name}")
    delete_netns(netns_path(container))


def read(container: str) -> tuple[str | None, list[str]]:
    """The bridge the container's veth is on and the IPv4 addresses inside, as they are now."""
    path = netns_path(container)
    if not path.exists():
        return None, []
    bridge = None
    with netlink.Netlink() as nl:
        veth = nl.link_by_name(host_veth(container))
        if veth is not None and veth.master:
            bridge = next((link.name for link in nl.links() if link.index == veth.master), None)

    def inside(inner: netlink.Netlink) -> list[str]:
        eth = _index(inner, PEER)
        return _ipv4(inner, eth) if eth is not None else []

    return bridge, _inside(path, inside)


def configure(netns: Path, interface: str, addresses: list[str]) -> None:
    """Bring `interface` (and loopback) up inside the namespace at `netns` and give it `addresses`."""

    def run(inner: netlink.Netlink) -> None:
        index, lo = _index(inner, interface), _index(inner, "lo")
        if index is None:
            raise BackendError(f"no interface {interface} in the container's network namespace")
        if lo is not None:
            _set_up(inner, lo)
        present = set(_ipv4(inner, index))
        for cidr in addresses:
            if cidr not in present:
                _add_ipv4(inner, index, cidr)
        _set_up(inner, index)

    _inside(netns, run)


def addresses_in(netns: Path, interface: str) -> list[str]:
    """The IPv4 addresses of `interface` inside the namespace at `netns` ([] when it is not there)."""

    def run(inner: netlink.Netlink) -> list[str]:
        index = _index(inner, interface)
        return _ipv4(inner, index) if index is not None else []

    try:
        return _inside(netns, run)
    except (BackendError, OSError):
        return []
