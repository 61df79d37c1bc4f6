"""The host's Ed25519 signing key on disk, and the ownership/permission rules for it and the state directory."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from op_dbus import files
from op_dbus.errors import LedgerError

MAX_KEY_FILE = 64 * 1024


class KeyFileError(LedgerError, files.UnsafeFile):
    """The key file or state directory is unsafe (owner, mode), missing, or unreadable. Never shows key bytes."""


def check_directory(path: Path, what: str) -> None:
    files.check_directory(path, what, KeyFileError)


def check_file(st: os.stat_result, path: Path, what: str, *, secret: bool) -> None:
    files.check_file(st, path, what, secret=secret, error=KeyFileError)


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
    files.fsync_dir(path.parent)


def create_private_key(path: Path) -> None:
    """A new key at `path` (0600, durable); an existing file there is kept (and then loaded by the caller)."""
    check_directory(path.parent, "key directory")
    _create_private_key(path)


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
    files.atomic_write(path, text.encode(), 0o644)


def write_private_file(path: Path, text: str) -> None:
    """Write a file atomically (mode 0600)."""
    files.atomic_write(path, text.encode(), 0o600)
