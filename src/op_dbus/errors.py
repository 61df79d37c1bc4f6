"""The error tree and the exit codes every command uses.

    OpDbusError                      exit 1 unless a subclass says otherwise
    ├── InvalidInput (ValueError)    exit 2: the state file or an argument is wrong; nothing was changed
    │   └── StateFileError           every problem of a document, each with its path
    ├── BackendError                 a protocol peer failed; carries the peer's own error name / errno
    │   ├── ServiceUnavailable       the bus, socket or daemon is not there (says what to start)
    │   ├── PermissionDenied         the peer refused us (says how to grant access)
    │   └── OperationTimeout (TimeoutError)
    ├── ApplyFailed                  exit 4: a change failed; the engine rolled back what it had done
    ├── LockHeld                     exit 5: another apply holds the state directory
    └── LedgerError                  the audit log is unreadable or fails verification
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
