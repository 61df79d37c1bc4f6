"""The engine: validate -> check -> query -> diff -> apply in plugin order -> verify -> record a block.

On any failure after the first change, every recorded undo step is replayed newest first, the result
is recorded as a `failed` block, and ApplyFailed (exit 4) is raised: the system ends as it was.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, NoReturn

from op_dbus.errors import ApplyFailed, LedgerError, OpDbusError, Problem, StateFileError
from op_dbus.plugin import Change, Context, Plugin, Section, UndoLog, load_plugins
from op_dbus.state import StateDocument, validate_document

# Verification re-reads the system a few times before it gives up: a unit that was just started can
# take a moment to settle, a link a moment to come up.
VERIFY_DELAYS = (0.0, 0.2, 0.5, 1.0)


@dataclass
class Plan:
    document: StateDocument
    plugins: dict[str, Plugin[Any]]
    current: dict[str, Section]
    changes: dict[str, list[Change]]

    @property
    def all_changes(self) -> list[Change]:
        return [c for name in self.plugins for c in self.changes.get(name, [])]

    def snapshot(self, states: dict[str, Section] | None = None) -> dict[str, Any]:
        """A state document of the managed objects as they are in `states` (default: before the apply)."""
        states = self.current if states is None else states
        return {"version": 1, "plugins": {n: p.dump(states[n]) for n, p in self.plugins.items() if n in states}}


@dataclass
class ApplyResult:
    plan: Plan
    applied: list[Change] = field(default_factory=list)
    block: Any = None  # the ledger's BlockHeader, when a log is kept
    dry_run: bool = False


def actor() -> dict[str, Any]:
    """Who is making the change, as far as this process can tell."""
    who: dict[str, Any] = {"uid": os.getuid(), "pid": os.getpid(), "host": socket.gethostname(),
                           "command": " ".join(sys.argv)[:500]}
    try:
        who["user"] = getpass.getuser()
    except (KeyError, OSError):
        who["user"] = str(os.getuid())
    for var in ("SUDO_USER", "SSH_CONNECTION"):
        if os.environ.get(var):
            who[var.lower()] = os.environ[var]
    return who


def summarise(changes: list[Change]) -> str:
    if not changes:
        return "no changes"
    words = [f"{c.object} {c.action}" for c in changes[:3]]
    more = f" (+{len(changes) - 3} more)" if len(changes) > 3 else ""
    return ", ".join(words) + more


class Engine:
    def __init__(self, ctx: Context, *, ledger: Callable[[], Any] | None = None,
                 load: Callable[[list[str] | None], dict[str, Plugin[Any]]] = load_plugins) -> None:
        self.ctx = ctx
        self._open_ledger = ledger  # None: agent mode, no log is kept
        self._load = load

    # -- reading -------------------------------------------------------------------------------------

    async def query(self, names: list[str] | None = None) -> dict[str, Any]:
        plugins = self._load(names)
        states = await asyncio.gather(*(p.query(self.ctx) for p in plugins.values()))
        return {name: p.dump(s) for (name, p), s in zip(plugins.items(), states, strict=True)}

    async def introspect(self, names: list[str] | None = None) -> dict[str, Any]:
        return {"version": 1, "plugins": await self.query(names)}

    # -- planning ------------------------------------------------------------------------------------

    async def plan(self, doc: StateDocument) -> Plan:
        plugins = self._load(list(doc.sections))
        problems = await asyncio.gather(*(p.check(doc.sections[n], self.ctx) for n, p in plugins.items()))
        found: list[Problem] = [p for ps in problems for p in ps]
        if found:
            raise StateFileError(doc.source, found)
        current = await self._query_scoped(plugins, doc)
        changes = {n: p.diff(doc.sections[n], current[n]) for n, p in plugins.items()}
        return Plan(doc, plugins, current, changes)

    async def _query_scoped(self, plugins: dict[str, Plugin[Any]], doc: StateDocument) -> dict[str, Section]:
        states = await asyncio.gather(*(p.query(self.ctx, scope=doc.sections[n]) for n, p in plugins.items()))
        return dict(zip(plugins, states, strict=True))

    async def drift(self, doc: StateDocument) -> tuple[list[Change], dict[str, Section]]:
        """What differs between `doc` and the live system, and the live state of what `doc` names."""
        plugins = self._load(list(doc.sections))
        current = await self._query_scoped(plugins, doc)
        return [c for n, p in plugins.items() for c in p.diff(doc.sections[n], current[n])], current

    # -- applying ------------------------------------------------------------------------------------

    async def apply(self, doc: StateDocument, *, dry_run: bool = False) -> ApplyResult:
        plan = await self.plan(doc)
        if dry_run:
            return ApplyResult(plan, dry_run=True)
        ledger = self._ledger()
        try:
            if ledger is not None and len(ledger) == 0:
                ledger.append("genesis", [], plan.snapshot(), actor=actor(), summary="initial state")
            undo = UndoLog()
            applied: list[Change] = []
            try:
                for name, plugin in plan.plugins.items():
                    steps = plan.changes[name]
                    if steps:
                        await plugin.apply(steps, self.ctx, undo)
                        applied.extend(steps)
                after = await self._verify(plan)
            except (OpDbusError, OSError, asyncio.CancelledError) as error:
                await self._fail(plan, undo, error, ledger)
            block = None
            if ledger is not None:
                block = ledger.append("apply", [c.to_record() for c in applied], plan.snapshot(after),
                                      actor=actor(), summary=summarise(applied))
            return ApplyResult(plan, applied, block)
        finally:
            if ledger is not None:
                ledger.close()

    async def _verify(self, plan: Plan) -> dict[str, Section]:
        mismatches: list[Change] = []
        current = plan.current
        for delay in VERIFY_DELAYS:
            if delay:
                await asyncio.sleep(delay)
            current = await self._query_scoped(plan.plugins, plan.document)
            mismatches = [c for n, p in plan.plugins.items() for c in p.diff(plan.document.sections[n], current[n])]
            if not mismatches:
                return current
        raise ApplyFailed("verification failed after the apply; still different: " + summarise(mismatches))

    async def _fail(self, plan: Plan, undo: UndoLog, error: BaseException, ledger: Any) -> NoReturn:
        undo_errors = await self.rollback(undo)
        try:
            after = await self._query_scoped(plan.plugins, plan.document)
            state = plan.snapshot(after)
        except OpDbusError as e:
            undo_errors.append(f"could not read the state after the rollback: {e}")
            state = plan.snapshot()
        message = str(error) if isinstance(error, OpDbusError) else f"{type(error).__name__}: {error}"
        if ledger is not None:
            ledger.append("failed", [c.to_record() for c in plan.all_changes], state, actor=actor(),
                          summary=f"failed, rolled back: {message.splitlines()[0][:200]}",
                          meta={"error": message, "rolled_back": not undo_errors, "undo_errors": undo_errors,
                                "undone": [c.to_record() for c in reversed(undo.entries)]})
        if undo_errors:
            raise ApplyFailed(f"apply failed: {message}\nrollback incomplete: " + "; ".join(undo_errors)) from None
        raise ApplyFailed(f"apply failed and was rolled back ({len(undo)} step(s) undone): {message}") from None

    async def rollback(self, undo: UndoLog) -> list[str]:
        """Replay recorded inverse steps newest first, one plugin batch at a time; return what failed."""
        errors: list[str] = []
        plugins = self._load(sorted({c.plugin for c in undo.entries})) if undo.entries else {}
        for name, group in groupby(reversed(undo.entries), key=lambda c: c.plugin):
            try:
                await plugins[name].apply(list(group), self.ctx, UndoLog())
            except OpDbusError as e:
                errors.append(f"{name}: {e}")
        return errors

    def _ledger(self) -> Any:
        if self._open_ledger is None:
            return None
        try:
            return self._open_ledger()
        except OpDbusError:
            raise
        except Exception as e:
            raise LedgerError(f"cannot open the audit log: {e}") from e


def document_from_snapshot(snapshot: dict[str, Any], source: str) -> StateDocument:
    """A block's state snapshot read back as a desired state (for verify --current and rollback)."""
    return validate_document(snapshot, source)
