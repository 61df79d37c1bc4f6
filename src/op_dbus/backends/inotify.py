"""Directory change notifications from the kernel (inotify, through libc), for state that lives only in files."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import struct
from collections.abc import AsyncIterator

from op_dbus.errors import BackendError

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

ENTRIES = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO  # a name appears in or leaves the directory
_HEADER = struct.Struct("iIII")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def parse(buf: bytes) -> list[tuple[int, int, str]]:
    """The (watch descriptor, mask, name) records of one read from an inotify descriptor."""
    out = []
    offset = 0
    while offset + _HEADER.size <= len(buf):
        wd, mask, _cookie, length = _HEADER.unpack_from(buf, offset)
        offset += _HEADER.size
        name = buf[offset:offset + length].split(b"\0", 1)[0].decode(errors="replace")
        offset += length
        out.append((wd, mask, name))
    return out


class DirectoryWatch:
    """Names created, removed or renamed in `directories` (those that exist), as an async stream."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise BackendError(f"inotify_init1 failed: {os.strerror(err)}",
                               hint="raise fs.inotify.max_user_instances, or rely on the periodic reconciliation")
        self.fd = fd
        self.dirs: dict[int, str] = {}

    def add(self, directory: str, mask: int = ENTRIES) -> bool:
        """Watch `directory`; False if it does not exist (yet)."""
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(directory), mask)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (2, 20):  # ENOENT, ENOTDIR
                return False
            raise BackendError(f"cannot watch {directory}: {os.strerror(err)}")
        self.dirs[wd] = directory
        return True

    async def events(self) -> AsyncIterator[tuple[str, int, str]]:
        """(directory, mask, name) as the kernel reports them; an overflow comes as ("", IN_Q_OVERFLOW, "")."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(self.fd, ready.set)
        try:
            while True:
                await ready.wait()
                ready.clear()
                while True:
                    try:
                        buf = os.read(self.fd, 65536)
                    except BlockingIOError:
                        break
                    for wd, mask, name in parse(buf):
                        if mask & IN_IGNORED:
                            self.dirs.pop(wd, None)
                            continue
                        yield self.dirs.get(wd, ""), mask, name
        finally:
            loop.remove_reader(self.fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
