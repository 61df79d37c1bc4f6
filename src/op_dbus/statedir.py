"""The state directory: where it is, its trust checks, and the files op-dbus keeps there."""

from __future__ import annotations

from pathlib import Path

from op_dbus import files
from op_dbus.journal import Journal
from op_dbus.lock import StateLock

# The one place the default is written: the CLI's --state-dir and Settings both take it from here.
DEFAULT_STATE_DIR = Path("/var/lib/op-dbus")

HOST_KEY = "host.key"
HOST_PUB = "host.pub"
SECRET_KEY = "secret-hmac.key"
LEDGER_DB = "ledger.db"


class StateDir:
    """`<state_dir>`: the audit log, the host keys, the lock and the intent record of the apply in progress.

    The directory is trusted only when root (or we) own it and nobody else can write it (files.trusted_dir);
    every path below is opened through files.py's checks by the module that owns the file.
    """

    def __init__(self, path: Path | str = DEFAULT_STATE_DIR) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"StateDir({str(self.path)!r})"

    def trusted(self) -> Path:
        """The directory, created (0700) if missing, after the trust checks; raises files.UnsafeFile otherwise."""
        return files.trusted_dir(self.path)

    def lock(self) -> StateLock:
        """The lock one apply (or log maintenance) holds at a time."""
        return StateLock(self.trusted())

    def journal(self) -> Journal:
        """The intent record of the transaction in progress, if any."""
        return Journal(self.trusted())

    def pending(self) -> bool:
        """Whether a transaction is in progress or awaits confirmation (a cheap stat, no trust check)."""
        return Journal(self.path).pending()

    @property
    def host_key(self) -> Path:
        return self.path / HOST_KEY

    @property
    def host_pub(self) -> Path:
        return self.path / HOST_PUB

    @property
    def secret_key(self) -> Path:
        return self.path / SECRET_KEY

    @property
    def ledger_db(self) -> Path:
        return self.path / LEDGER_DB
