"""The engine: every apply is one transaction across all plugins, and the only writer of the audit log.

    lock the state dir (exit 5 if another apply holds it) -> finish any interrupted transaction ->
    check -> query -> diff -> note which health probes pass -> write the intent record (the checkpoint:
    the state of everything the plan touches) -> apply plugin by plugin, each recording the inverse of
    every step -> verify (bounded retries) -> required probes -> append a block -> remove the record

On any failure after the first change, the recorded inverse steps are replayed newest first, the result
is checked against the checkpoint (and converged to it where an inverse fell short), a `failed` block
records what was attempted, what failed and what was undone, and ApplyFailed (exit 4) is raised.

If op-dbus dies mid-apply (kill -9, power loss), the intent record outlives it: the next op-dbus command
that takes the lock converges back to the checkpoint and records that. With `--confirm-timeout`, a
detached watchdog does the same at the deadline unless `op-dbus confirm` arrives first.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import getpass
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, NoReturn

from op_dbus import secret
from op_dbus.auditlog import AuditLog, AuditLogOpener, BlockHeaderView, InclusionProofView
from op_dbus.engine import faults, probes
from op_dbus.engine.confirm import settings_from_record, settings_record, spawn_watchdog, watchdog_alive
from op_dbus.errors import ApplyFailed, InvalidInput, LedgerError, LockHeld, OpDbusError, Problem, StateFileError
from op_dbus.journal import Intent, Journal
from op_dbus.plugin import Change, Context, Plugin, Section, UndoLog, load_plugins
from op_dbus.state import StateDocument, validate_document
from op_dbus.statedir import StateDir

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
class RollbackResult:
    """`rollback_to`: the proof that the target block is in the signed log, and the transaction that returned to it."""

    index: int
    proof: InclusionProofView
    result: ApplyResult


@dataclass
class CurrentReport:
    """`verify_current`: the live system against the state recorded in the last block."""

    block: int
    state_hash: str
    drift: list[Change] = field(default_factory=list)
    error: str | None = None  # the last block does not verify (nothing was compared)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.drift


@dataclass
class ApplyResult:
    plan: Plan
    applied: list[Change] = field(default_factory=list)
    block: BlockHeaderView | None = None  # when a log is kept
    dry_run: bool = False
    confirm_by: float | None = None  # epoch seconds; the change reverts then unless confirmed


def _when(epoch: float | None) -> str:
    return "?" if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _epoch(when: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(when, "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return time.time()  # unreadable: treat the deadline as passed


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


def summarise(changes: list[Change], limit: int = 160) -> str:
    """One line: changes grouped by action, e.g. "enable app-backend.service, app-worker.service; start nginx.service"."""
    if not changes:
        return "no changes"
    groups: dict[str, list[str]] = {}
    for c in changes:
        groups.setdefault(c.action, []).append(c.object)
    text = "; ".join(f"{action} {', '.join(objects)}" for action, objects in groups.items())
    return text if len(text) <= limit else text[: limit - 12].rstrip(" ,;") + f" ... ({len(changes)})"


def claim_conflicts(claims: dict[str, dict[str, str]]) -> list[Problem]:
    """Resources (e.g. an interface) that more than one plugin of a document takes charge of."""
    holders: dict[str, list[tuple[str, str]]] = {}
    for plugin, claimed in claims.items():
        for resource, where in claimed.items():
            holders.setdefault(resource, []).append((plugin, where))
    return [Problem(f"plugins.{held[0][0]}", f"{resource} is declared by {len(held)} plugins, which would fight over "
                    "it; declare it in one only: " + "; ".join(f"{p}: {w}" for p, w in held))
            for resource, held in holders.items() if len(held) > 1]


class Engine:
    """The one writer of the audit log: applies, rollbacks, confirmations and recorded drift all go through here.

    `ledger` opens the log for each operation (and the engine closes it after); `log` is a log its owner
    keeps open and closes itself (the agent's). Neither: no log is kept (dry runs, agent --no-log).
    """

    def __init__(self, ctx: Context, *, ledger: AuditLogOpener | None = None, log: AuditLog | None = None,
                 load: Callable[[list[str] | None], dict[str, Plugin[Any]]] = load_plugins) -> None:
        self.ctx = ctx
        self._open_ledger = ledger
        self._lent_log = log
        self._load = load
        secret.use_key_dir(ctx.settings.state_dir)  # secrets are recorded as HMACs under this host's key

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
        conflicts = claim_conflicts({n: p.claims(doc.sections[n]) for n, p in plugins.items()})
        if conflicts:
            raise StateFileError(doc.source, conflicts)
        # check and query read the same things (a unit's UnitFileState, the links): they run together, and a
        # problem check finds still wins over an error the query ran into.
        checked, queried = await asyncio.gather(
            asyncio.gather(*(p.check(doc.sections[n], self.ctx) for n, p in plugins.items())),
            self._query_scoped(plugins, doc), return_exceptions=True)
        if isinstance(checked, BaseException):
            raise checked
        found: list[Problem] = [p for ps in checked for p in ps]
        if found:
            raise StateFileError(doc.source, found)
        if isinstance(queried, BaseException):
            raise queried
        current = queried
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

    async def apply(self, doc: StateDocument, *, dry_run: bool = False, confirm_timeout: float | None = None,
                    lock_wait: float = 0.0, kind: str = "apply", meta: dict[str, Any] | None = None) -> ApplyResult:
        """Converge to `doc` as one transaction; see the module docstring for what happens on failure.

        The block is recorded with `kind` (apply, rollback) and `meta` added to its meta (e.g. the agent's
        note of the drift it repairs).
        """
        if dry_run:
            plan = await self.plan(doc)
            secret.require_known(plan.all_changes)
            return ApplyResult(plan, dry_run=True)
        with self.state_dir.lock().acquire(lock_wait), self._log() as ledger:
            await self._recover_locked(ledger)
            pending = self.journal.read()
            if pending is not None:
                raise LockHeld(f"block {pending.block} awaits confirmation until {_when(pending.deadline)}; "
                               "nothing else is applied meanwhile",
                               hint="run `op-dbus confirm` to keep that change or `op-dbus abort` to revert it")
            plan = await self.plan(doc)
            secret.require_known(plan.all_changes)  # a recorded secret cannot be set back without its value
            return await self._transaction(plan, ledger, confirm_timeout, kind, meta or {})

    async def _transaction(self, plan: Plan, ledger: AuditLog | None, confirm_timeout: float | None, kind: str,
                           extra: dict[str, Any]) -> ApplyResult:
        if ledger is not None and len(ledger) == 0:
            ledger.append("genesis", [], plan.snapshot(), actor=actor(), summary="initial state")
        required = await probes.passing(plan.document.probes, self.ctx)
        intent = Intent.new(plan.document.source, plan.snapshot(), [c.to_record() for c in plan.all_changes],
                            settings_record(self.ctx.settings))
        self.journal.begin(intent)
        if confirm_timeout is not None:
            # Armed before the first change: a kill -9 from here on is still reverted by the watchdog.
            intent.watchdog_pid = spawn_watchdog(self.ctx.settings, intent.id)
            self.journal.write(intent)
        faults.point("before-apply")
        undo = UndoLog()
        applied: list[Change] = []
        try:
            for name, plugin in plan.plugins.items():
                steps = plan.changes[name]
                if steps:
                    await plugin.apply(steps, self.ctx, undo)
                    applied.extend(steps)
                    faults.point(f"after-plugin:{name}")
            after = await self._verify(plan)
            await probes.require(required, self.ctx)
        except BaseException as error:
            # ANY exception rolls back, not only the expected ones: a bug in a plugin (struct.error), Ctrl-C
            # (KeyboardInterrupt) or a cancelled task must not leave half a change behind. _fail raises ApplyFailed.
            await self._fail(plan, undo, error, ledger, intent)
        faults.point("before-append")
        meta: dict[str, Any] = {**extra, "txid": intent.id}
        if confirm_timeout is not None:
            intent.deadline = time.time() + confirm_timeout
            meta["confirm_by"] = _when(intent.deadline)
        block = None
        if ledger is not None:
            block = ledger.append(kind, [c.to_record() for c in applied], plan.snapshot(after),
                                  actor=actor(), summary=summarise(applied), meta=meta)
        faults.point("after-append")
        if confirm_timeout is None:
            self.journal.remove()
        else:
            intent.phase, intent.block = "confirm-pending", block.index if block is not None else None
            self.journal.write(intent)
            faults.point("confirm-pending")
        return ApplyResult(plan, applied, block, confirm_by=intent.deadline)

    async def _verify(self, plan: Plan) -> dict[str, Section]:
        """Re-read and compare, with bounded retries; a pass must still hold after the plugins' settle time."""
        # The plugins' settle windows end at `settle_by`; a read that began before then does not count as settled.
        settle = max((p.settle_time(plan.changes[n]) for n, p in plan.plugins.items()), default=0.0)
        settle_by = time.monotonic() + settle
        mismatches: list[Change] = []
        for delay in VERIFY_DELAYS:
            if delay:
                await asyncio.sleep(delay)
            current, mismatches = await self._compare(plan)
            if not mismatches and settle:
                # Only what is left of the window: the read above counted towards it.
                await asyncio.sleep(max(0.0, settle_by - time.monotonic()))
                settle = 0.0
                current, mismatches = await self._compare(plan)
            if not mismatches:
                return current
        raise ApplyFailed("verification failed after the apply; still different: " + summarise(mismatches))

    async def _compare(self, plan: Plan) -> tuple[dict[str, Section], list[Change]]:
        current = await self._query_scoped(plan.plugins, plan.document)
        return current, [c for n, p in plan.plugins.items() for c in p.diff(plan.document.sections[n], current[n])]

    async def _fail(self, plan: Plan, undo: UndoLog, error: BaseException, ledger: AuditLog | None,
                    intent: Intent) -> NoReturn:
        """Undo what was applied, check the result against the checkpoint, record the attempt, raise."""
        undo_errors = await self.rollback(undo)
        undo_errors += [f"{c.summary()} cannot be undone" for c in undo.irreversible_steps]
        checkpoint = document_from_snapshot(intent.checkpoint, f"checkpoint of {intent.id}", self._load)
        # the checkpoint records secrets as HMACs; the values read before the change are still in memory
        secret.supply(checkpoint.sections, secret.collect(plan.current, plan.document.sections))
        state = await self._converge_back(checkpoint, undo_errors)
        message = str(error) if isinstance(error, OpDbusError) else f"{type(error).__name__}: {error}"
        if ledger is not None:
            undone = [{**c.to_record(), "undone": True} for c in reversed(undo.entries)]
            ledger.append("failed", intent.changes + undone, state, actor=actor(),
                          summary=f"failed, {'partly ' if undo_errors else ''}rolled back: {message.splitlines()[0][:200]}",
                          meta=failure_meta(intent.id, message, undo_errors, len(undone)))
        self.journal.remove()
        if undo_errors:
            raise ApplyFailed(f"apply failed: {message}\nrollback incomplete: " + "; ".join(undo_errors)) from None
        raise ApplyFailed(f"apply failed and was rolled back ({len(undo)} step(s) undone): {message}") from None

    async def _converge_back(self, checkpoint: StateDocument, errors: list[str]) -> dict[str, Any]:
        """Verify the system against the checkpoint; converge to it where undo steps left a difference.

        Appends what could not be restored to `errors`; returns the state reached (a state document).
        """
        plugins = self._load(list(checkpoint.sections))
        try:
            left, current = await self.drift(checkpoint)
            if left:
                # a secret recorded only as its HMAC cannot be set back; everything else still is
                blocked = {id(c) for c in left if secret.unknown_in(c)}
                if blocked:
                    errors.append(secret.needed_message(c for c in left if id(c) in blocked))
                for name, plugin in plugins.items():
                    steps = [c for c in left if c.plugin == name and id(c) not in blocked]
                    if steps:
                        await plugin.apply(steps, self.ctx, UndoLog())
                left, current = await self.drift(checkpoint)
        except Exception as e:  # whatever broke, the attempt is still recorded and reported
            errors.append(f"could not restore the state before the change: {e}")
            return {"version": 1, "plugins": {}}
        if left:
            errors.append("still different from before the change: " + summarise(left))
        return {"version": 1, "plugins": {n: p.dump(current[n]) for n, p in plugins.items()}}

    # -- interrupted transactions and commit-confirm ---------------------------------------------------

    @property
    def state_dir(self) -> StateDir:
        return StateDir(self.ctx.settings.state_dir)

    @property
    def journal(self) -> Journal:
        return self.state_dir.journal()

    async def recover(self) -> str | None:
        """Finish a transaction a dead op-dbus left behind (if any, and if no other op-dbus is busy)."""
        if not self.journal.pending():
            return None
        lock = self.state_dir.lock()
        if not lock.try_acquire():
            return None  # its owner is alive and will finish it
        with lock, self._log() as ledger:
            return await self._recover_locked(ledger)

    async def _recover_locked(self, ledger: AuditLog | None) -> str | None:
        intent = self.journal.read()
        if intent is None:
            return None
        if intent.phase == "applying":
            head = ledger.head() if ledger is not None else None
            if head is not None and head.meta.get("txid") == intent.id:
                if "confirm_by" not in head.meta:
                    self.journal.remove()  # it had been recorded; only the clean-up was cut short
                    return f"transaction {intent.id} had completed (block {head.index})"
                # Cut short between recording the block and arming the confirmation: the block has the deadline.
                intent.phase, intent.block = "confirm-pending", head.index
                intent.deadline = intent.deadline or _epoch(head.meta["confirm_by"])
                self.journal.write(intent)
            else:
                return await self._revert(intent, ledger, "failed",
                                          f"interrupted: op-dbus pid {intent.pid} ended during the apply")
        if intent.deadline is not None and time.time() >= intent.deadline:
            return await self._revert(intent, ledger, "rollback", f"block {intent.block} was not confirmed in time")
        if not watchdog_alive(intent):
            intent.watchdog_pid = spawn_watchdog(self.ctx.settings, intent.id)
            self.journal.write(intent)
        return None

    async def _revert(self, intent: Intent, ledger: AuditLog | None, kind: str, reason: str) -> str:
        """Converge back to the intent's checkpoint, with the settings it was applied with, and record it."""
        errors: list[str] = []
        checkpoint = document_from_snapshot(intent.checkpoint, f"checkpoint of {intent.id}", self._load)
        engine = Engine(Context(settings_from_record(intent.settings, self.ctx.settings)), load=self._load)
        async with engine.ctx:
            undoing, _current = await engine.drift(checkpoint)
            state = await engine._converge_back(checkpoint, errors)
        if ledger is not None:
            ledger.append(kind, [c.to_record() for c in undoing], state, actor=actor(),
                          summary=f"reverted to the state before block {intent.block}: {reason}"
                          if intent.block is not None else f"reverted an interrupted apply: {reason}",
                          meta={"txid": intent.id, "reason": reason, "reverts": intent.block, "errors": errors})
        self.journal.remove()
        outcome = f"{reason}; reverted {len(undoing)} change(s)"
        return outcome + (" — incomplete: " + "; ".join(errors) if errors else "")

    async def confirm(self) -> BlockHeaderView | None:
        with self.state_dir.lock().acquire(5.0), self._log() as ledger:
            intent = self.journal.read()
            if intent is None or intent.phase != "confirm-pending":
                raise InvalidInput("no change awaits confirmation")
            block = None
            if ledger is not None:
                pending = ledger.get(intent.block) if intent.block is not None else None
                state = pending.state if pending is not None and pending.state is not None else intent.checkpoint
                block = ledger.append("confirm", [], state, actor=actor(), summary=f"confirmed block {intent.block}",
                                      meta={"txid": intent.id, "confirms": intent.block})
            self.journal.remove()  # the watchdog sees it gone and exits
            return block

    async def abort(self) -> str:
        with self.state_dir.lock().acquire(5.0), self._log() as ledger:
            intent = self.journal.read()
            if intent is None:
                raise InvalidInput("no change awaits confirmation: nothing to abort")
            return await self._revert(intent, ledger, "rollback", "aborted by `op-dbus abort`")

    async def watch(self, txid: str, poll: float = 0.2) -> str | None:
        """The commit-confirm watchdog: revert transaction `txid` if its op-dbus dies or its deadline passes."""
        lock = self.state_dir.lock()
        while True:
            intent = self.journal.read()
            if intent is None or intent.id != txid:
                return None  # confirmed, aborted or already reverted
            due = intent.phase == "applying" or (intent.deadline is not None and time.time() >= intent.deadline)
            if due and lock.try_acquire():
                with lock, self._log() as ledger:
                    intent = self.journal.read()
                    if intent is None or intent.id != txid:
                        return None
                    if intent.phase == "applying" or time.time() >= (intent.deadline or 0):
                        outcome = await self._recover_locked(ledger)
                        if outcome is not None:
                            return outcome
                        # else the apply had been recorded and now awaits confirmation: keep watching
            await asyncio.sleep(poll)

    # -- the log's other writers: drift, maintenance, key rotation -----------------------------------------

    @contextlib.contextmanager
    def hold(self, wait: float = 5.0) -> Iterator[None]:
        """The state-dir lock for `wait` seconds at most (else LockHeld, exit 5): no apply runs meanwhile."""
        with self.state_dir.lock().acquire(wait):
            yield

    @contextlib.contextmanager
    def try_hold(self) -> Iterator[bool]:
        """The state-dir lock if it is free now (True), else False at once: for callers that come back later."""
        lock = self.state_dir.lock()
        held = lock.try_acquire()
        try:
            yield held
        finally:
            if held:
                lock.release()

    def busy(self) -> bool:
        """A transaction is in progress or a change awaits `op-dbus confirm`: not the time to judge the system."""
        return self.state_dir.pending()

    def record_drift(self, changes: list[dict[str, Any]], state: dict[str, Any], *, observed: dict[str, Any],
                     summary: str, meta: dict[str, Any]) -> BlockHeaderView | None:
        """Record a `drift` block (and the genesis block first, on an empty log); None when no log is kept.

        `observed` is who made the change, as far as the event source says. The caller holds the state-dir
        lock (`try_hold`), so the block cannot land in the middle of a transaction.
        """
        return self.record_observation("drift", changes, state, observed=observed, summary=summary, meta=meta)

    def record_observation(self, kind: str, changes: list[dict[str, Any]], state: dict[str, Any], *,
                           observed: dict[str, Any], summary: str, meta: dict[str, Any]) -> BlockHeaderView | None:
        """Record a block of something seen rather than done: `drift`, or `refused` (a git commit not applied,
        with the reason in `meta`); the genesis block first on an empty log. None when no log is kept. The
        caller holds the state-dir lock (`try_hold`)."""
        with self._log() as ledger:
            if ledger is None:
                return None
            if len(ledger) == 0:
                ledger.append("genesis", [], state, actor=actor(), summary="initial state, as the agent found it")
            return ledger.append(kind, changes, state, actor=observed, summary=summary[:500], meta=meta)

    def rotate_key(self) -> dict[str, Any]:
        """Replace the host key, recording a `key-rotation` block (under the lock); what changed, for the CLI."""
        with self.hold(5.0), self._log() as opened:
            if opened is None:
                raise InvalidInput("no audit log is kept: there is no key to rotate")
            ledger: Any = opened  # the ledger's key management is beyond what AuditLog promises
            if len(ledger) == 0:
                raise InvalidInput("the audit log is empty: there is no history to carry over to a new key",
                                   hint="the first `op-dbus apply` creates the log and its key")
            old = ledger.verifier
            header = ledger.rotate_key(actor=actor())
            new = ledger.verifier
            return {"block": header.index, "kind": header.kind, "old_key": old.vkey, "new_key": new.vkey,
                    "old_key_id": old.key_id.hex(), "new_key_id": new.key_id.hex(),
                    "old_public_key": str(ledger.old_public_key_path(old.key_id)),
                    "public_key": str(ledger.public_key_path), "checkpoint": ledger.checkpoint(header.index + 1)}

    # -- returning to a recorded state, comparing with it ------------------------------------------------

    async def rollback_to(self, index: int, *, dry_run: bool = False, confirm_timeout: float | None = None,
                          secrets: StateDocument | None = None) -> RollbackResult:
        """Return the system to the state recorded in block `index`, after proving the block is in the signed log.

        `secrets` fills recorded secret HMACs with values that hash to the same (the log keeps no secret).
        The rollback is one transaction recording a `rollback` block (none when `dry_run`).
        """
        with self._log() as ledger:
            if ledger is None:
                raise InvalidInput("no audit log is kept: there is no recorded state to roll back to")
            if index >= len(ledger):
                raise InvalidInput(f"no block {index}: the log has {len(ledger)} block(s) (0..{len(ledger) - 1})")
            proof = ledger.prove(index)
        block = proof.block
        if block.state is None:
            raise InvalidInput(f"block {index}'s state snapshot was compacted away: only its hash is kept, so there is "
                               "nothing to roll back to", hint="roll back to a later block whose state is kept")
        doc = document_from_snapshot(block.state, f"block {index}", self._load)
        if secrets is not None:
            secret.supply(doc.sections, secret.collect(secrets.sections))
        meta = {"to_block": index, "to_state": block.header.state_hash}
        engine = self if not dry_run else Engine(self.ctx, load=self._load)
        result = await engine.apply(doc, dry_run=dry_run, confirm_timeout=confirm_timeout, kind="rollback", meta=meta)
        return RollbackResult(index, proof, result)

    async def verify_current(self) -> CurrentReport:
        """Compare the live system with the state of the last block, once that block proves against the signed
        checkpoint: O(log n) hashes and one signature, where `verify --full` rereads everything."""
        from op_dbus.ledger import LedgerCorrupt, NoteError, ProofError

        with self._log() as ledger:
            head = ledger.head() if ledger is not None else None
            if ledger is None or head is None:
                raise InvalidInput("the audit log is empty: nothing to verify against",
                                   hint="run `op-dbus apply FILE` first; it records the state to verify against")
            try:
                block = ledger.prove(head.index).block
            except (ProofError, NoteError, LedgerCorrupt) as exc:
                return CurrentReport(head.index, head.state_hash, error=f"the last block does not verify: {exc}")
        if block.state is None:
            raise InvalidInput(f"block {head.index}'s state snapshot was compacted away; cannot compare against it")
        doc = document_from_snapshot(block.state, f"block {head.index}", self._load)
        drift, _current = await self.drift(doc)
        return CurrentReport(head.index, head.state_hash, drift)

    async def rollback(self, undo: UndoLog) -> list[str]:
        """Replay recorded inverse steps newest first, one plugin batch at a time; return what failed."""
        errors: list[str] = []
        plugins = self._load(sorted({c.plugin for c in undo.entries})) if undo.entries else {}
        for name, group in groupby(reversed(undo.entries), key=lambda c: c.plugin):
            try:
                await plugins[name].apply(list(group), self.ctx, UndoLog())
            except Exception as e:  # one plugin's failed undo must not stop the others' (a bug included)
                errors.append(f"{name}: {e}" if isinstance(e, OpDbusError) else f"{name}: {type(e).__name__}: {e}")
        return errors

    @contextlib.contextmanager
    def _log(self) -> Iterator[AuditLog | None]:
        """The audit log for the duration of a block (None when no log is kept)."""
        if self._lent_log is not None:
            yield self._lent_log  # its owner closes it
            return
        ledger = self._ledger()
        try:
            yield ledger
        finally:
            if ledger is not None:
                ledger.close()

    def _ledger(self) -> AuditLog | None:
        if self._open_ledger is None:
            return None
        try:
            return self._open_ledger()
        except OpDbusError:
            raise
        except Exception as e:
            raise LedgerError(f"cannot open the audit log: {e}") from e


# A failed block's meta stays well under the log's meta limit whatever the size of the failure: the steps
# undone go into the block's change records (marked "undone"), and long texts are cut here.
FAILURE_TEXT = 4096
FAILURE_ERRORS = 8


def failure_meta(txid: str, message: str, undo_errors: list[str], undone: int) -> dict[str, Any]:
    """The meta of a `failed` block: the error, what could not be undone (bounded), and how many steps were undone."""

    def cut(text: str, limit: int) -> str:
        return text if len(text) <= limit else text[:limit] + f" ... ({len(text)} characters in all)"

    meta: dict[str, Any] = {"txid": txid, "error": cut(message, FAILURE_TEXT), "rolled_back": not undo_errors,
                            "undo_errors": [cut(e, FAILURE_TEXT // FAILURE_ERRORS) for e in undo_errors[:FAILURE_ERRORS]],
                            "undone": undone}
    if len(undo_errors) > FAILURE_ERRORS:
        meta["undo_errors_total"] = len(undo_errors)
    return meta


def document_from_snapshot(snapshot: dict[str, Any], source: str,
                           load: Callable[[list[str] | None], dict[str, Plugin[Any]]] = load_plugins) -> StateDocument:
    """A recorded state snapshot read back as a desired state (for verify --current, recovery and rollback)."""
    return validate_document(snapshot, source, load)
