"""Files a root tool may trust, and durable writes: the StrictModes rules and atomic replace-with-fsync."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from op_dbus.errors import InvalidInput


class UnsafeFile(InvalidInput, PermissionError):
    """A file or directory another user could have written (or read, for a secret); never shows its content."""


def owner_ok(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def check_directory(path: Path, what: str, error: type[UnsafeFile] = UnsafeFile) -> None:
    """Refuse a directory another user could write to or that another non-root user owns (sshd StrictModes)."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise error(f"{what} {path} does not exist") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path} is not a directory")
    if not owner_ok(st):
        raise error(f"{what} {path} is owned by uid {st.st_uid}, not root or uid {os.geteuid()}",
                    hint=f"chown {os.geteuid()} {path}")
    if st.st_mode & 0o022:
        raise error(f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})",
                    hint=f"chmod go-w {path}")


def check_file(st: os.stat_result, path: Path, what: str, *, secret: bool,
               error: type[UnsafeFile] = UnsafeFile) -> None:
    """Refuse a file another user owns or could write (or, for a secret, read)."""
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is not a regular file")
    if not owner_ok(st):
        raise error(f"{what} {path} is owned by uid {st.st_uid}, not root or uid {os.geteuid()}; refusing it",
                    hint=f"chown {os.geteuid()} {path}")
    mask = 0o077 if secret else 0o022
    if st.st_mode & mask:
        kind = "readable or writable" if secret else "writable"
        raise error(f"{what} {path} is {kind} by group or others (mode {stat.S_IMODE(st.st_mode):04o}); refusing it",
                    hint=f"chmod 0600 {path}" if secret else f"chmod go-w {path}")


def check_parent(path: Path) -> None:
    """The directory holding a trusted file: others may not write there, unless it is sticky (like /tmp),
    where they cannot replace a file they do not own."""
    parent = path.resolve().parent
    st = parent.stat()
    sticky = bool(st.st_mode & stat.S_ISVTX)
    if not owner_ok(st) or (st.st_mode & 0o022 and not sticky):
        raise UnsafeFile(f"{path}: its directory {parent} is writable by others (or owned by uid {st.st_uid}); "
                         "refusing it", hint=f"chmod go-w {parent}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so a reader (or a crash) sees the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
