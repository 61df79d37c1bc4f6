"""DHCP clients found on the system (dhclient, udhcpc): start one for an interface in a namespace, stop it again.

A client runs detached in its own session; its pid file, keyed by namespace, family and interface, is how it is
found again. Stopping signals only a process that lives in the namespace the pid file is for.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

from op_dbus.backends import netlink as nl
from op_dbus.errors import BackendError

# Which DHCP clients op-dbus knows how to hand an interface to, in order of preference.
CLIENTS = ("dhclient", "udhcpc")
INSTALL_HINT = "install isc-dhcp-client or busybox's udhcpc, or give static addresses"


def find_client() -> str | None:
    """The path of the first DHCP client installed, None if there is none."""
    for name in CLIENTS:
        path = shutil.which(name)
        if path:
            return path
    return None


def netns_inode(netns: str | None) -> int:
    """The namespace's inode: the same however it is named (by name or path), different for every namespace."""
    try:
        return os.stat(nl.netns_path(netns) if netns else "/proc/thread-self/ns/net").st_ino
    except OSError as exc:
        raise BackendError(f"network namespace {netns!r}: {exc.strerror or exc}") from exc


def pidfile(ifname: str, family: int, netns_ino: int) -> str:
    # keyed by namespace: the same interface name in two namespaces has two clients
    return f"/run/op-dbus-dhcp{family}-net{netns_ino}-{ifname}.pid"


def stop(ifname: str, family: int, netns_ino: int) -> None:
    """SIGTERM to the client the pid file names, only if that process lives in the namespace the file is for."""
    try:
        with open(pidfile(ifname, family, netns_ino)) as f:
            pid = int(f.read().strip())
        if pid > 0 and os.stat(f"/proc/{pid}/ns/net").st_ino == netns_ino:
            os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass  # no client, or it is gone: nothing to stop


def start(ifname: str, family: int, netns: str | None, netns_ino: int) -> None:
    """Start the installed client for `ifname` inside `netns` (None: this namespace), detached."""
    client = find_client()
    if client is None:
        raise BackendError(f"no DHCP client found (looked for {', '.join(CLIENTS)})", hint=INSTALL_HINT)
    pid_path = pidfile(ifname, family, netns_ino)
    if os.path.basename(client) == "dhclient":
        argv = [client, "-nw", "-pf", pid_path] + (["-6"] if family == 6 else []) + [ifname]
    else:
        argv = [client, "-b", "-i", ifname, "-p", pid_path]
    fd = nl.open_netns(netns) if netns else None

    def enter(fd: int | None = fd) -> None:
        if fd is not None:
            nl.setns(fd)

    try:
        subprocess.Popen(argv, preexec_fn=enter, start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as exc:
        raise BackendError(f"cannot start {client}: {exc}") from exc
    finally:
        if fd is not None:
            os.close(fd)
