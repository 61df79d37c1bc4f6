"""The host's Ed25519 signing key on disk, and the ownership/permission rules for it and the state directory."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from op_dbus.errors import LedgerError

MAX_KEY_FILE = 64 * 1024


class KeyFileError(LedgerError, PermissionError):
    """The key file or state directory is unsafe (owner, mode), missing, or unreadable. Never shows key bytes."""


def _owner_ok(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def check_directory(path: Path, what: str) -> None:
    """Refuse a directory another user could write to or that another non-root user owns (sshd StrictModes)."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise KeyFileError(f"{what} {path} does not exist") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise KeyFileError(f"{what} {path} is not a directory")
    if not _owner_ok(st):
        raise KeyFileError(
            f"{what} {path} is owned by uid {st.st_uid}, not root or uid {os.geteuid()}",
            hint=f"chown {os.geteuid()} {path}",
        )
    if st.st_mode & 0o022:
        raise KeyFileError(
            f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"chmod go-w {path}",
        )


def check_file(st: os.stat_result, path: Path, what: str, *, secret: bool) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{what} {path} is not a regular file")
    if not _owner_ok(st):
        raise KeyFileError(
            f"{what} {path} is owned by uid {st.st_uid}, not root or uid {os.geteuid()}",
            hint=f"chown {os.geteuid()} {path}",
        )
    mask = 0o077 if secret else 0o022
    if st.st_mode & mask:
        kind = "readable or writable" if secret else "writable"
        raise KeyFileError(
            f"{what} {path} is {kind} by group or others (mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it",
            hint=f"chmod 0600 {path}" if secret else f"chmod go-w {path}",
        )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyFileError(f"cannot open host key {path}: {exc.strerror}") from None
    try:
        check_file(os.fstat(fd), path, "host key", secret=True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # The parser's message may quote the file; say only what is wrong.
        raise KeyFileError(f"host key {path} is not an unencrypted PKCS#8 PEM private key") from None
    finally:
        del data
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"host key {path} is not an Ed25519 key")
    return key


def _create_private_key(path: Path) -> None:
    """Write a new key so that no reader ever sees a partial file: a private temp file, then link(2)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created the key first; theirs wins
    except FileExistsError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_or_create_private_key(path: Path, *, create: bool) -> tuple[Ed25519PrivateKey, bool]:
    """The host key at `path`, creating it (mode 0600) when missing and `create` is set. Returns (key, created)."""
    check_directory(path.parent, "key directory")
    created = False
    try:
        return load_private_key(path), created
    except FileNotFoundError:
        if not create:
            raise KeyFileError(f"host key {path} does not exist") from None
    _create_private_key(path)
    created = True
    return load_private_key(path), created


def write_public_file(path: Path, text: str) -> None:
    """Write a public file atomically (mode 0644)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_private_file(path: Path, text: str) -> None:
    """Write a file atomically (mode 0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
