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
    data = files.read_checked(path, "host key", limit=MAX_KEY_FILE, secret=True, error=KeyFileError)
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
    with contextlib.suppress(FileExistsError):  # another process created the key first; theirs wins
        files.atomic_write(path, pem, 0o600, replace=False, what="host key", error=KeyFileError)


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
    files.atomic_write(path, text.encode(), 0o644, error=KeyFileError)


def write_private_file(path: Path, text: str) -> None:
    """Write a file atomically (mode 0600)."""
    files.atomic_write(path, text.encode(), 0o600, error=KeyFileError)
