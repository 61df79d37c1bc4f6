"""What the engine and the agent need of the audit log: a typed protocol the ledger package implements.

The engine is the only writer of blocks; it sees the log through `AuditLog`, so the model layer never
imports the ledger and a test can hand the engine any log that keeps these promises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol


class BlockHeaderView(Protocol):
    """A recorded block's header (op_dbus.ledger.BlockHeader)."""

    @property
    def index(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def time(self) -> str: ...
    @property
    def actor(self) -> dict[str, Any]: ...
    @property
    def summary(self) -> str: ...
    @property
    def state_hash(self) -> str: ...
    @property
    def meta(self) -> dict[str, Any]: ...

    def to_dict(self) -> dict[str, Any]: ...


class BlockView(Protocol):
    """A recorded block: its header, and its changes and state unless compaction dropped them (None)."""

    @property
    def header(self) -> BlockHeaderView: ...
    @property
    def changes(self) -> list[dict[str, Any]] | None: ...
    @property
    def state(self) -> dict[str, Any] | None: ...


class InclusionProofView(Protocol):
    """A block proved to be in the tree the latest signed checkpoint commits to."""

    @property
    def block(self) -> BlockView: ...
    @property
    def size(self) -> int: ...
    @property
    def proof(self) -> list[bytes]: ...

    def to_dict(self) -> dict[str, Any]: ...


class AuditLog(Protocol):
    """The append-only, signed log of every change (op_dbus.ledger.Ledger)."""

    def __len__(self) -> int: ...

    def append(self, kind: str, changes: Sequence[Mapping[str, Any]], state: Mapping[str, Any], *,
               actor: Mapping[str, Any], summary: str, meta: Mapping[str, Any] | None = None) -> BlockHeaderView: ...

    def head(self) -> BlockHeaderView | None: ...

    def headers(self, start: int = 0, stop: int | None = None) -> Sequence[BlockHeaderView]: ...

    def get(self, index: int) -> BlockView: ...

    def prove(self, index: int) -> InclusionProofView: ...

    def close(self) -> None: ...


# How the engine opens the log when it needs it (and closes it right after): e.g. `lambda: Ledger.open(dir)`.
AuditLogOpener = Callable[[], AuditLog]
