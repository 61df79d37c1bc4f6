"""The error tree and the exit codes every command uses.

Every error op-dbus raises on purpose descends from OpDbusError; the CLI turns it into its exit code and
message (with a hint saying what to do). Classes live beside the code that raises them (module in
brackets) when moving them here would make the model layer import a backend or the ledger; the tree is
drawn here whole. A subclass that also inherits a builtin keeps `except ValueError` (etc.) working.

    OpDbusError                              exit 1 unless a subclass says otherwise
    ├── InvalidInput (ValueError)            exit 2: the state file or an argument is wrong; nothing was changed
    │   ├── StateFileError                   every problem of a document, each with its path
    │   ├── SignatureMismatch                a value does not fit a D-Bus signature [backends.dbus_types]
    │   ├── SecretNeeded                     a change sets a secret known only by its HMAC [secret]
    │   └── UnsafeFile (PermissionError)     a file others could write (or read, for a secret) [files]
    │       └── KeyFileError (+LedgerError)  the host key is unsafe, missing or not an Ed25519 key [ledger.keys]
    ├── BackendError                         a protocol peer failed; `code` keeps its error name / errno name
    │   ├── ServiceUnavailable               the bus, socket or daemon is not there (says what to start)
    │   ├── PermissionDenied (PermissionError)  the peer refused us (says how to grant access)
    │   ├── OperationTimeout (TimeoutError)
    │   ├── NetlinkError                     the kernel refused a request; `errno`, extended ack [backends.netlink]
    │   ├── NetlinkOverrun                   ENOBUFS: replies were dropped, the outcome is re-read [backends.netlink]
    │   ├── MalformedMessage                 a netlink message that does not decode [backends.netlink]
    │   ├── OvsdbError                       ovsdb-server answered with an error [backends.ovsdb]
    │   ├── UnsupportedFeature               a container backend cannot do what the state asks [backends.containers]
    │   ├── NotFound                         a container engine answered 404 [backends.containers.http]
    │   └── Conflict                         a container engine answered 409 [backends.containers.http]
    ├── ApplyFailed                          exit 4: a change failed; the engine rolled back what it had done
    ├── LockHeld                             exit 5: another apply holds the state directory
    ├── LedgerError                          the audit log is unreadable or fails verification
    │   ├── LedgerCorrupt                    the database is damaged or contradicts itself [ledger.store]
    │   │   └── LedgerVerificationFailed     exit 3: a check a command needs first fails [ledger.store]
    │   ├── BlockNotFound (IndexError)       [ledger.store]
    │   ├── ProofError (ValueError)          an inclusion or consistency proof does not verify [ledger.merkle]
    │   ├── NoteError (ValueError)           a signed note or checkpoint is malformed or unsigned [ledger.note]
    │   ├── CanonicalError (ValueError)      a value RFC 8785 cannot represent (NaN, ...) [ledger.canonical]
    │   └── KeyFileError                     (above, under UnsafeFile: exit 2)
    ├── GitError                             git failed (fetch, signature check, reading objects) [gitops.git]
    └── MissingExtra                         the collector's optional dependencies are not installed [cli.collector]

Secrets (op_dbus.secret) raise SecretNeeded, or UnsafeFile for the HMAC key file.
`python -m op_dbus.audit_verify` is a standalone verifier for auditors, with its own exit codes (0 ok,
2 unreadable, 3 failed) and no dependency on this tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    INVALID_INPUT = 2
    DIFFERENCE = 3
    APPLY_FAILED = 4
    LOCKED = 5


EXIT_CODES_HELP = (
    "Exit codes: 0 ok / no difference; 1 internal error; 2 invalid input (nothing changed); "
    "3 difference or drift found; 4 apply failed and was rolled back; 5 locked by another apply."
)


class OpDbusError(Exception):
    """Root of every error op-dbus raises on purpose."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class InvalidInput(OpDbusError, ValueError):
    exit_code = ExitCode.INVALID_INPUT


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document: where (a JSON path such as `plugins.systemd.units["a"]`) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class StateFileError(InvalidInput):
    """A state document is invalid; `problems` lists every problem found, not only the first."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s); nothing was changed\n{lines}")


class BackendError(OpDbusError):
    """A protocol peer (D-Bus service, kernel, ovsdb-server, container engine) returned an error."""

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code  # the peer's own error name (D-Bus) or errno name (netlink)


class ServiceUnavailable(BackendError):
    pass


class PermissionDenied(BackendError, PermissionError):
    pass


class OperationTimeout(BackendError, TimeoutError):
    pass


class ApplyFailed(OpDbusError):
    exit_code = ExitCode.APPLY_FAILED


class LockHeld(OpDbusError):
    exit_code = ExitCode.LOCKED


class LedgerError(OpDbusError):
    pass
