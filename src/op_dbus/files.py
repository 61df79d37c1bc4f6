"""Files a root tool may trust, and durable writes: the StrictModes rules and atomic replace-with-fsync.

Every file op-dbus reads or writes as root goes through `open_checked` (or a helper built on it): the file is
opened once (never a second open by path), the *opened* file is checked with fstat, and every directory from
it up to `/` must be owned by root (or the invoking user) and not writable by group or others, unless sticky
(like /tmp, where nobody can replace what they do not own). A check that only stat()s the path and then opens it
again can be raced by whoever can swap a link in between; a check of the parent alone misses a root directory
inside a directory another user owns. Writes go to a private temporary file in the same checked directory and
replace the target with rename(2), which replaces a planted link itself, never what it points to.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from op_dbus.errors import InvalidInput


class UnsafeFile(InvalidInput, PermissionError):
    """A file or directory another user could have written (or read, for a secret); never shows its content."""


# The test suite's switch for fault points and backend overrides (see `testing_enabled`): both this environment
# variable and this root-owned file must be present.
TEST_SWITCH_ENV = "OP_DBUS_TESTING"
TEST_SWITCH_FILE = Path("/run/op-dbus-testing")


def owner_ok(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def _fix_owner(path: Path | str) -> str:
    return f"chown {os.geteuid()} {path}" if os.geteuid() else f"chown root: {path}"


def check_file(st: os.stat_result, path: Path | str, what: str, *, secret: bool,
               error: type[UnsafeFile] = UnsafeFile) -> None:
    """Refuse a file another user owns or could write (or, for a secret, read)."""
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is not a regular file")
    if not owner_ok(st):
        raise error(f"{what} {path} is owned by uid {st.st_uid}, not root or uid {os.geteuid()}; refusing it",
                    hint=_fix_owner(path))
    mask = 0o077 if secret else 0o022
    if st.st_mode & mask:
        kind = "readable or writable" if secret else "writable"
        raise error(f"{what} {path} is {kind} by group or others (mode {stat.S_IMODE(st.st_mode):04o}); refusing it",
                    hint=f"chmod 0600 {path}" if secret else f"chmod go-w {path}")


def _check_dir_stat(st: os.stat_result, path: Path | str, what: str, error: type[UnsafeFile], *,
                    sticky_ok: bool = True) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path} is not a directory")
    if not owner_ok(st):
        raise error(f"{what} {path} is owned by uid {st.st_uid}, not root or uid {os.geteuid()}; refusing it",
                    hint=_fix_owner(path))
    if st.st_mode & 0o022 and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        raise error(f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                    "refusing it", hint=f"chmod go-w {path}")


def check_ancestors(real: str, what: str, path: Path | str, error: type[UnsafeFile] = UnsafeFile) -> None:
    """Every directory above the resolved path `real`, up to `/`: owned by root or us, and not writable by group
    or others unless sticky. `real` has no links left, and an unsafe directory cannot be swapped out of a safe
    one, so walking the names is enough."""
    parent = os.path.dirname(real)
    while True:
        try:
            st = os.stat(parent)
        except OSError as exc:
            raise error(f"{what} {path}: cannot check its directory {parent} ({exc.strerror})") from None
        _check_dir_stat(st, parent, f"{what} {path}: its directory", error)
        if parent == "/":
            return
        parent = os.path.dirname(parent)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_checked(path: Path | str, what: str, *, flags: int = os.O_RDONLY, mode: int = 0o600,
                 directory: bool = False, secret: bool = False, follow: bool = False, sticky_ok: bool = False,
                 error: type[UnsafeFile] = UnsafeFile) -> tuple[int, os.stat_result]:
    """Open `path` once and check what was opened (OpenSSH's safe_path): the fd's own fstat (type, owner, mode),
    then every directory above it. `follow=False` refuses a link as the last component (O_NOFOLLOW). The path is
    resolved after opening and must still name the opened file, so a link swapped in between is refused rather
    than checked in place of what was read. Returns (fd, fstat); the caller closes the fd.

    A directory opened itself must not be writable by others even when sticky (they could still add files to it)
    unless `sticky_ok` (a place such as /tmp, for a new file of unguessable name). Missing files raise
    FileNotFoundError (callers decide whether that is fine); anything else raises `error` (exit 2) with the path,
    what was found and what to do.
    """
    text = os.fspath(path)
    # O_NONBLOCK: a FIFO or device in a file's place must be refused by the checks below, not wait in open(2)
    open_flags = (flags | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
                  | (os.O_DIRECTORY if directory else os.O_NONBLOCK))
    try:
        fd = os.open(text, open_flags, mode)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise error(f"{what} {path} is a symbolic link; op-dbus does not follow links here",
                        hint=f"replace the link with the file itself, or remove it: rm {path}") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise error(f"{what} {path}: permission denied (running as uid {os.geteuid()})",
                        hint="run op-dbus as root (sudo), or pass a --state-dir this user owns") from None
        if exc.errno == errno.ENOTDIR and directory:
            raise error(f"{what} {path} is not a directory") from None
        if exc.errno == errno.EISDIR:
            raise error(f"{what} {path} is a directory, expected a file") from None
        raise error(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if directory:
            _check_dir_stat(st, path, what, error, sticky_ok=sticky_ok)
        else:
            check_file(st, path, what, secret=secret, error=error)
        real = os.path.realpath(text)
        try:
            now = os.stat(real)
        except OSError:
            now = None
        if now is None or not _same_file(st, now):
            raise error(f"{what} {path} changed while it was being opened (a link was swapped?); refusing it",
                        hint="check who else can change this path")
        check_ancestors(real, what, path, error)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_checked(path: Path | str, what: str, *, limit: int, secret: bool = False, follow: bool = False,
                 error: type[UnsafeFile] = UnsafeFile) -> bytes:
    """The content of a checked file, read from the descriptor that was checked; at most `limit` + 1 bytes (a
    caller that sees more than `limit` knows the file is too large)."""
    fd, _ = open_checked(path, what, secret=secret, follow=follow, error=error)
    try:
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_directory(path: Path | str, what: str, error: type[UnsafeFile] = UnsafeFile) -> None:
    """Refuse a directory another user could write to or that another non-root user owns (sshd StrictModes),
    or that sits below such a directory. The directory itself may be a link (to a checked directory)."""
    try:
        fd, _ = open_checked(path, what, flags=os.O_RDONLY, directory=True, follow=True, error=error)
    except FileNotFoundError as exc:
        raise error(f"{what} {path} does not exist") from exc
    os.close(fd)


def trusted_dir(path: Path | str, what: str = "state directory", *, create: bool = True,
                error: type[UnsafeFile] = UnsafeFile) -> Path:
    """The state directory (or another of op-dbus's own directories), created 0700 when missing and `create`
    is set, then checked like every trusted file. Returns the path, absolute."""
    p = Path(path).absolute()
    if create:
        try:
            p.mkdir(mode=0o700, parents=True, exist_ok=True)
        except PermissionError:
            raise error(f"cannot create or reach the {what} {p}: permission denied (running as uid {os.geteuid()})",
                        hint="run op-dbus as root (sudo), or pass a --state-dir this user owns") from None
        except OSError as exc:
            raise error(f"cannot create the {what} {p}: {exc.strerror}") from None
    check_directory(p, what, error)
    return p


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path | str, data: bytes, mode: int = 0o600, *, durable: bool = True, replace: bool = True,
                 check_dir: bool = True, what: str = "file", error: type[UnsafeFile] = UnsafeFile) -> None:
    """Replace `path` with `data` so a reader (or a crash) sees the old file or the new one, never a mix.

    The directory is checked and held open; the data goes to a new private file there (O_EXCL|O_NOFOLLOW, a
    random name, so nothing planted is written through), then takes the target's name with rename(2), which
    replaces a link at `path` rather than what it points to. `durable` fsyncs the file and the directory;
    `replace=False` refuses to replace an existing file (FileExistsError) instead. `check_dir=False` is for a file
    handed to the user (an export to a path they chose, e.g. in their home): every step works relative to the
    directory opened once, so no link is followed even in a directory another user owns.
    """
    target = Path(path)
    if check_dir:
        dir_fd, _ = open_checked(target.parent, f"directory of {what} {target}", directory=True, follow=True,
                                 sticky_ok=True, error=error)
    else:
        try:
            dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise error(f"cannot write {what} {target}: {exc.strerror}") from None
    try:
        tmp = f".{target.name}.{os.urandom(8).hex()}.tmp"  # unguessable; `secrets` costs --help 10 ms
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        renamed = False
        try:
            try:
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.rename(tmp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                renamed = True
            else:  # link(2) never replaces a file that appeared meanwhile
                os.link(tmp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        finally:
            if not renamed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
        if durable:
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def testing_enabled() -> bool:
    """Whether the test suite's switch is on: fault points (OP_DBUS_FAULTS) and backend overrides (OP_DBUS_PCT)
    are honoured only then. It takes both the environment variable and a root-owned marker file that passes the
    checks above, so neither a stray variable in a unit file nor a file another user made turns it on."""
    if os.environ.get(TEST_SWITCH_ENV) != "1":
        return False
    try:
        fd, st = open_checked(TEST_SWITCH_FILE, "test switch")
    except (OSError, InvalidInput):
        return False
    os.close(fd)
    return st.st_uid == 0
