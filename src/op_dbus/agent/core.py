"""The agent loop: watch every plugin's own change events, recompute the difference, record or repair it.

    start -> load the state file -> open a session (one Context: the agent's connections) -> reconcile
    -> READY=1 -> wait for events | reload | periodic reconciliation | stop
    event burst (debounced) -> query + diff the plugins that reported -> drift?
        shadow:  a `drift` block (what differs, declared -> live, who where the source says), nothing changed
        enforce: a `drift` block, then `Engine.apply` of the state file: one transaction, its own `apply` block
                 (meta `repairs` names the drift block)

A plugin whose source goes away (the bus or ovsdb-server restarts; its watch raises or its query fails)
goes blind alone: its gap is reported, the other plugins are still watched and repaired, and new sessions
(fresh connections) are tried with backoff; the one that reads it again reconciles it fully, so a change made
during the gap is found. A periodic full reconciliation covers events a plugin cannot watch or that were
missed.

Sharing the state directory with `op-dbus apply`: the agent never holds the state lock while idle. It takes
it only to record a drift block (and the engine takes it for a repair), and defers while another op-dbus
holds it or a change awaits `op-dbus confirm`. A block another op-dbus appended since (an `apply` or a
`rollback`) is adopted: its recorded state is laid over the agent's state file for the sections the agent
manages (`op_dbus.agent.merge`), so a manual apply is kept, not fought, until the state file changes or
the agent is reloaded. Without an audit log (agent-only mode) there is no block to adopt: the agent then
only waits for the other apply to finish, and enforces its file afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from op_dbus import files
from op_dbus.agent import logs
from op_dbus.agent.merge import overlay_document
from op_dbus.agent.metrics import Metrics
from op_dbus.agent.notify import Notifier
from op_dbus.agent.status import write_status
from op_dbus.engine import Engine, actor, summarise
from op_dbus.errors import ApplyFailed, BackendError, LockHeld, OpDbusError, ServiceUnavailable
from op_dbus.plugin import SUBSCRIBED, Change, Context, Plugin, Settings, WatchEvent, load_plugins
from op_dbus.secret import collect, redact_record, supply
from op_dbus.state import StateDocument, load_document, parse_text, read_state_file, validate_document
from op_dbus.statedir import StateDir

MODES = ("shadow", "enforce")
SUBSCRIBE_TIMEOUT = 10.0
AGENT_LOCK = "agent.lock"
DEFER_DELAY = 0.25  # seconds between looks at a state directory another op-dbus is using
ADOPTED_KINDS = ("apply", "rollback")


@dataclass
class AgentConfig:
    state_file: Path
    mode: str = "shadow"
    read_only: bool = False
    interval: float = 300.0  # seconds between full reconciliations
    debounce: float = 0.02  # an event burst is collected this long before the difference is computed
    retry_max: float = 30.0  # longest wait between reconnection attempts
    file_poll: float = 1.0  # how often the state file's identity (inode, size, mtime) is compared
    metrics: str | None = None  # HOST:PORT of the Prometheus endpoint (loopback), None: off
    collectors: tuple[Any, ...] = ()  # fleet.client.Collector: witnesses each new checkpoint is sent to
    source: Any = None  # a git source (op_dbus.gitops.source.GitSource) instead of the state file; None: the file


@dataclass
class _Restart(Exception):
    reason: str


@dataclass
class Pending:
    """What an event burst said: which plugins and objects, from which sources, who, and since when."""

    plugins: set[str] = field(default_factory=set)
    objects: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    origin: dict[str, Any] = field(default_factory=dict)
    first: float = 0.0

    def add(self, event: WatchEvent, at: float) -> None:
        if not self.plugins:
            self.first = at
        self.plugins.add(event.plugin)
        self.objects.extend(o for o in event.objects if o not in self.objects)
        if event.source not in self.sources:
            self.sources.append(event.source)
        if event.origin:
            self.origin = event.origin


def drift_key(c: Change) -> str:
    return json.dumps([c.plugin, c.object, c.action, c.before, c.after], sort_keys=True, default=str)


def drift_record(c: Change) -> dict[str, Any]:
    """A difference as the log records it: declared -> live (`repair` is the action that restores it)."""
    return {"plugin": c.plugin, "object": c.object, "action": "drift", "repair": c.action,
            "before": c.after, "after": c.before}


class Agent:
    def __init__(self, config: AgentConfig, settings: Settings, *, ledger: Callable[[], Any] | None = None,
                 load: Callable[[list[str] | None], dict[str, Plugin[Any]]] = load_plugins,
                 logger: logging.Logger | None = None, notifier: Notifier | None = None) -> None:
        if config.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.config = config
        self.settings = settings
        self._open_ledger = ledger
        self._ledger: Any = None
        self._load = load
        self.log = logger or logs.setup()
        self.notify = notifier or Notifier()
        self.metrics = Metrics()
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.file_doc: StateDocument | None = None
        self.doc: StateDocument | None = None
        self.adopted: list[int] = []
        self.known: dict[str, set[str]] = {}  # plugin -> drift keys already reported
        self.live: dict[str, Any] = {}  # plugin -> last dump of the managed objects
        self.watching: dict[str, str] = {}
        self.gaps: list[dict[str, Any]] = []
        self.ready = False
        self.stopping = False
        self.started = time.time()
        self.last_reconcile: dict[str, Any] | None = None
        self.last_drift: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.seen_index = -1
        self._file_id: tuple[int, ...] | None = None
        self._engine: Engine | None = None
        self._failed: set[str] = set()  # the drift a repair last failed on
        self._subscribed: dict[str, asyncio.Event] = {}
        self._reloading = False
        self._listened = False  # a session got as far as listening since the last failure
        self.lost: dict[str, dict[str, Any]] = {}  # plugin -> its open gap (its source is unreachable)
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = 0.5
        self._agent_lock: int | None = None
        self._deferring = False
        self._deferred: set[str] = set()
        self._recheck: asyncio.TimerHandle | None = None
        self.source_meta: dict[str, Any] = {}  # what the kept document came from (git commit, signer, paths)
        self._staged: Any = None  # a git commit's outcome waiting for the reload that takes it
        self._fetch_now = asyncio.Event()
        self._waiting_for: str | None = None  # the commit a closed rollout wave holds back (logged once)

    @property
    def mode(self) -> str:
        return "shadow" if self.config.read_only else self.config.mode

    # -- logging and status --------------------------------------------------------------------------

    def _emit(self, level: int, event: str, msg: str, **fields: Any) -> None:
        logs.emit(self.log, level, event, msg, **fields)

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "mode": self.mode, "requested_mode": self.config.mode,
            "read_only": self.config.read_only,
            "state_file": str(self.config.state_file) if self.config.source is None else self.config.source.describe(),
            "log": self._open_ledger is not None, "started": _iso(self.started), "ready": self.ready,
            "interval": self.config.interval, "watching": self.watching, "adopted_blocks": self.adopted,
            "last_reconcile": self.last_reconcile, "last_drift": self.last_drift, "last_error": self.last_error,
            "gaps": self.gaps[-5:], "counts": self.metrics.counts(),
            "open_drift": sum(len(v) for v in self.known.values()),
            **({"git": self.config.source.status()} if self.config.source is not None else {}),
        }

    def _write_status(self) -> None:
        try:
            write_status(self.settings.state_dir, self.status())
        except OSError as e:
            self._emit(logging.WARNING, "status", f"cannot write the status file: {e}")

    def _sd_status(self) -> str:
        drift = sum(len(v) for v in self.known.values())
        last = self.last_reconcile["time"] if self.last_reconcile else "never"
        return f"{self.mode}: {drift} open drift, last reconcile {last}"

    # -- the state file ------------------------------------------------------------------------------

    def _stat_file(self) -> tuple[int, ...] | None:
        try:
            st = self.config.state_file.stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def load_file(self) -> StateDocument:
        if self.config.source is not None:
            return self._load_source()
        self._file_id = self._stat_file()
        path = self.config.state_file
        if self._load is load_plugins:
            doc = load_document(path)
        else:  # plugins given by the caller (tests, embedding): validate against those
            doc = validate_document(parse_text(read_state_file(path), str(path)), str(path), self._load)
        self.file_doc, self.doc, self.adopted = doc, doc, []
        self.known.clear()
        return doc

    async def _watch_file(self) -> None:
        while True:
            await asyncio.sleep(self.config.file_poll)
            ident = self._stat_file()
            if ident is not None and ident != self._file_id:
                self._file_id = ident
                self.inbox.put_nowait(("reload", "the state file changed"))

    # -- running -------------------------------------------------------------------------------------

    async def run(self) -> int:
        StateDir(self.settings.state_dir).trusted()  # in every mode, --no-log included: agent.json and the locks live there
        self._hold_agent_lock()
        loop = asyncio.get_running_loop()
        for sig, item in ((signal.SIGTERM, ("stop", "SIGTERM")), (signal.SIGINT, ("stop", "SIGINT")),
                          (signal.SIGHUP, ("reload", "SIGHUP"))):
            loop.add_signal_handler(sig, self.inbox.put_nowait, item)
        if self.config.source is not None:  # SIGHUP fetches now; a new commit then reloads
            loop.add_signal_handler(signal.SIGHUP, self._fetch_now.set)
        try:
            self.load_file()
        except BaseException:
            if self._agent_lock is not None:
                os.close(self._agent_lock)
                self._agent_lock = None
            raise
        if self._open_ledger is not None:
            self._ledger = self._open_ledger()
            self.seen_index = len(self._ledger) - 1
        helpers = [asyncio.create_task(self._watch_file(), name="state-file") if self.config.source is None
                   else asyncio.create_task(self._watch_source(), name="git")]
        reporter = None
        if self.config.collectors and self._open_ledger is not None:
            from op_dbus.agent.report import Reporter

            reporter = Reporter(self._open_ledger, list(self.config.collectors))
            reporter.start()
        if self.notify.watchdog_interval:
            helpers.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        server = await self.metrics.serve(self.config.metrics) if self.config.metrics else None
        self._emit(logging.INFO, "start", f"op-dbus agent starting in {self.mode} mode",
                   state_file=str(self.config.state_file) if self.config.source is None
                   else self.config.source.describe(), read_only=self.config.read_only,
                   plugins=list(self.doc.sections) if self.doc else [], log=self._open_ledger is not None,
                   metrics=self.config.metrics)
        if self.config.read_only and self.config.mode == "enforce":
            self._emit(logging.WARNING, "read-only", "--read-only: drift is recorded, never repaired")
        delay = 0.5
        reason = "start"
        try:
            while not self.stopping:
                try:
                    await self._session(reason)
                except _Restart as r:
                    reason = r.reason
                    delay = 0.5
                except (ServiceUnavailable, BackendError, OSError) as e:
                    if self._listened:
                        delay, self._listened = 0.5, False
                    error = str(e).splitlines()[0]
                    if self.gaps and "until" not in self.gaps[-1]:
                        gap = self.gaps[-1]  # still the same gap: another failed attempt
                        gap["error"], gap["attempts"] = error, gap.get("attempts", 1) + 1
                    else:
                        gap = {"since": _iso(time.time()), "error": error, "attempts": 1}
                        self.gaps = [*self.gaps[-19:], gap]
                        self.metrics.inc("reconnects")
                    self.last_error = error
                    self.watching = {n: "lost" for n in self.watching}
                    self._emit(logging.ERROR, "lost", f"lost a source, reconnecting in {delay:.1f} s: {error}",
                               retry_in=delay, attempts=gap["attempts"])
                    if not self.ready:
                        # up, though blind for now: systemd should not kill a keeper waiting for its sources
                        self.ready = True
                        self.notify.ready(f"{self.mode}: waiting for a source: {error}")
                    else:
                        self.notify.status(f"{self.mode}: reconnecting: {error}")
                    self._write_status()
                    if await self._sleep_or_stop(delay):
                        break
                    delay = min(delay * 2, self.config.retry_max)
                    reason = "reconnect"
        finally:
            self.notify.stopping()
            for t in helpers:
                t.cancel()
            for t in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if server is not None:
                server.close()
            if reporter is not None:
                await asyncio.to_thread(reporter.stop)
            if self._ledger is not None:
                self._ledger.close()
            if self._agent_lock is not None:
                os.close(self._agent_lock)
                self._agent_lock = None
            self.ready = False
            self._write_status()
            self._emit(logging.INFO, "stop", "op-dbus agent stopped")
        return 0

    def _hold_agent_lock(self) -> None:
        """One agent per state directory (two would record every drift twice and race to repair it). A separate
        lock from the apply lock, held for the agent's life and dropped by the kernel when it dies."""
        path = self.settings.state_dir / AGENT_LOCK
        fd, _ = files.open_checked(path, "agent lock file", flags=os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LockHeld(f"another op-dbus agent (pid {holder}) already keeps the state in {self.settings.state_dir}",
                           hint="stop it first (systemctl stop op-dbus), or give this one its own --state-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._agent_lock = fd

    async def _sleep_or_stop(self, delay: float) -> bool:
        """Wait `delay` seconds for a reconnection; True if a stop came meanwhile (a reload is taken)."""
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = await asyncio.wait_for(self.inbox.get(), left)
            except TimeoutError:
                return False
            if isinstance(item, tuple) and item[0] == "stop":
                self.stopping = True
                return True
            if isinstance(item, tuple) and item[0] == "reload":
                self._reload(item[1])
        return False

    async def _watchdog(self) -> None:
        interval = self.notify.watchdog_interval or 1.0
        while True:
            self.notify.watchdog()
            await asyncio.sleep(interval)

    async def _session(self, reason: str) -> None:
        assert self.doc is not None
        async with Context(self.settings) as ctx:
            engine = Engine(ctx, log=self._ledger, load=self._load)  # the agent keeps its log open and closes it
            self._engine = engine
            outcome = await engine.recover()
            if outcome:
                self._emit(logging.WARNING, "recovered", f"recovered an interrupted transaction: {outcome}")
            # Subscribe first, then compare: a change made in between is seen either way.
            self._subscribed = {name: asyncio.Event() for name in self.doc.sections}
            watchers = [asyncio.create_task(self._pump(name, ctx), name=f"watch-{name}") for name in self.doc.sections]
            try:
                async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                    for event in self._subscribed.values():
                        await event.wait()
            except TimeoutError:
                late = [n for n, e in self._subscribed.items() if not e.is_set()]
                self._emit(logging.WARNING, "subscribe-slow", f"no subscription yet for {', '.join(late)}; going on")
            try:
                await self._reconcile(reason, set(self.doc.sections))
            except BaseException:
                for t in watchers:
                    t.cancel()
                raise
            for gap in self.gaps:
                if "plugin" not in gap and "until" not in gap:
                    gap["until"] = _iso(time.time())
                    self._emit(logging.INFO, "reconnected", "sources are back; reconciled", gap=gap)
            self._listened = True
            if not self.ready or self._reloading:
                # READY=1 again also ends a reload (RELOADING=1), for `systemctl reload` to return
                self.ready, self._reloading = True, False
                self.notify.ready(self._sd_status())
            else:
                self.notify.status(self._sd_status())
            self._write_status()
            try:
                await self._listen()
            finally:
                for t in watchers:
                    t.cancel()
                for t in watchers:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
                self._engine = None

    async def _pump(self, name: str, ctx: Context) -> None:
        """Move one plugin's watch events into the inbox; report its end or its loss."""
        assert self.doc is not None
        plugin = self._load([name])[name]
        self.watching[name] = "subscribing"
        count = 0
        try:
            async for event in plugin.watch(self.doc.sections[name], ctx):
                count += 1
                if event.source == SUBSCRIBED:
                    self.watching[name] = "watching"
                    self._subscribed[name].set()
                    continue
                self.inbox.put_nowait(event)
        except asyncio.CancelledError:
            raise
        except OpDbusError as e:
            self.inbox.put_nowait(("lost", name, e))
            return
        except Exception as e:  # a bug in a watcher must not stop the agent: reconnect and reconcile
            self.inbox.put_nowait(("lost", name, ServiceUnavailable(f"{name} watcher failed: {e!r}")))
            return
        finally:
            self._subscribed[name].set()
        self.watching[name] = "periodic only" if count == 0 else "ended"

    async def _listen(self) -> None:
        next_full = time.monotonic() + self.config.interval
        pending = Pending()
        while True:
            if pending.plugins:
                timeout = max(0.0, pending.first + self.config.debounce - time.monotonic())
            else:
                timeout = max(0.0, next_full - time.monotonic())
            try:
                item = await asyncio.wait_for(self.inbox.get(), timeout)
            except TimeoutError:
                item = None
            if isinstance(item, WatchEvent):
                self.metrics.inc("events", item.plugin)
                pending.add(item, time.monotonic())
                continue
            if isinstance(item, tuple):
                kind = item[0]
                if kind == "stop":
                    self.stopping = True
                    self._emit(logging.INFO, "stopping", f"stopping on {item[1]}")
                    return
                if kind == "reload":
                    if self._reload(item[1]):
                        raise _Restart("reload")
                    continue
                if kind == "lost":
                    self._mark_lost(item[1], item[2])
                    continue
                if kind == "retry":
                    if self.lost:
                        raise _Restart("reconnect")
                    continue
                if kind == "recheck":
                    pending.plugins |= set(item[1])
                    pending.sources.append("deferred")
                    pending.first = pending.first or time.monotonic()
                    continue
            # the debounce window closed, or the periodic reconciliation is due
            if pending.plugins:
                burst, pending = pending, Pending()
                await self._check(burst)
            elif time.monotonic() >= next_full:
                assert self.doc is not None
                await self._reconcile("periodic", set(self.doc.sections))
                next_full = time.monotonic() + self.config.interval

    # -- sources lost and back -------------------------------------------------------------------------

    def _mark_lost(self, name: str, error: BaseException) -> None:
        """`name`'s source is unreachable: only that plugin goes blind; retried with backoff in a new session."""
        text = (str(error).splitlines() or [type(error).__name__])[0]
        gap = self.lost.get(name)
        if gap is None:
            gap = {"plugin": name, "since": _iso(time.time()), "error": text, "attempts": 1}
            self.lost[name] = gap
            self.gaps = [*self.gaps[-19:], gap]
            self.metrics.inc("reconnects", name)
            self._emit(logging.ERROR, "lost", f"lost the source of {name}: {text}; the other plugins are still "
                       f"watched, retrying in {self._retry_delay:.1f} s", plugin=name)
        else:
            gap["error"], gap["attempts"] = text, gap["attempts"] + 1
        self.last_error = f"{name}: {text}"
        self.watching[name] = "lost"
        if self._retry is None:
            def fire() -> None:
                self._retry = None
                self.inbox.put_nowait(("retry",))

            self._retry = asyncio.get_running_loop().call_later(self._retry_delay, fire)
            self._retry_delay = min(self._retry_delay * 2, self.config.retry_max)
        self.notify.status(f"{self.mode}: {name} unreachable: {text}")
        self._write_status()

    def _mark_back(self, name: str) -> None:
        gap = self.lost.pop(name, None)
        if gap is None:
            return
        gap["until"] = _iso(time.time())
        self._emit(logging.INFO, "reconnected", f"the source of {name} is back; reconciled", gap=gap)
        if not self.lost:
            self._retry_delay = 0.5

    def _healthy(self) -> StateDocument:
        """The state file without the plugins whose sources are unreachable (what a repair can apply)."""
        assert self.doc is not None
        if not self.lost:
            return self.doc
        return StateDocument(self.doc.version, {n: sec for n, sec in self.doc.sections.items() if n not in self.lost},
                             self.doc.source, self.doc.probes)

    async def _drift(self, names: set[str], full: bool) -> tuple[list[Change], dict[str, Any], set[str]]:
        """Per plugin, so one unreachable source blinds only its plugin: (changes, live states, plugins read)."""
        assert self._engine is not None
        if not full:
            names = names - set(self.lost)  # a lost plugin is tried again only by the next session's reconciliation
        order = sorted(names)
        results = await asyncio.gather(*(self._engine.drift(self._subdocument({n})) for n in order),
                                       return_exceptions=True)
        changes: list[Change] = []
        current: dict[str, Any] = {}
        read: set[str] = set()
        for name, result in zip(order, results, strict=True):
            if isinstance(result, (ServiceUnavailable, BackendError, OSError)):
                self._mark_lost(name, result)
                continue
            if isinstance(result, BaseException):
                raise result
            changes += result[0]
            current.update(result[1])
            read.add(name)
            if full:
                self._mark_back(name)
        return changes, current, read

    def _reload(self, reason: str) -> bool:
        """Re-read the state file; keep the old one (and say so) if the new one is not valid."""
        self.notify.reloading()
        self._reloading = True
        try:
            doc = self.load_file()
        except OpDbusError as e:
            self._reloading = False
            self.notify.ready(f"{self.mode}: reload refused, see the journal")
            self.last_error = f"reload ({reason}) refused: {e}"
            self._emit(logging.ERROR, "reload-refused", f"the state file is not valid; keeping the previous one: {e}")
            self._write_status()
            return False
        self.metrics.inc("reloads")
        self._emit(logging.INFO, "reload", f"reloaded the state file ({reason})", plugins=list(doc.sections))
        return True

    # -- checking ------------------------------------------------------------------------------------

    async def _reconcile(self, reason: str, plugins: set[str]) -> None:
        started = time.monotonic()
        await self._check(Pending(plugins=plugins, sources=[reason], first=started), full=True)
        self.metrics.inc("reconciles")
        self.last_reconcile = {"time": _iso(time.time()), "reason": reason,
                               "duration_ms": round((time.monotonic() - started) * 1000, 1),
                               "open_drift": sum(len(v) for v in self.known.values())}
        self._write_status()
        self.notify.status(self._sd_status())

    def _subdocument(self, plugins: set[str]) -> StateDocument:
        assert self.doc is not None
        return StateDocument(self.doc.version, {n: s for n, s in self.doc.sections.items() if n in plugins},
                             self.doc.source, [])

    async def _check(self, burst: Pending, full: bool = False) -> None:
        assert self.doc is not None and self._engine is not None
        changes, current, names = await self._drift(burst.plugins & set(self.doc.sections), full)
        if not names:
            return
        plugins = self._load(list(names))
        for n in names:
            self.live[n] = plugins[n].dump(current[n])
        keys = {n: {drift_key(c) for c in changes if c.plugin == n} for n in names}
        new = [c for c in changes if drift_key(c) not in self.known.get(c.plugin, set())]
        resolved = [k for n in names for k in self.known.get(n, set()) - keys[n]]
        if not new and not resolved and not (changes and self.mode == "enforce"):
            for n in names:
                self.known[n] = keys[n]
            return
        engine = self._engine
        if engine.busy():  # a change made with `apply --confirm-timeout` awaits confirmation: not ours to judge
            self._defer(names)
            return
        with engine.try_hold() as held:
            if not held:
                self._defer(names)
                return
            self._deferring = False
            if self._adopt():
                # the state to keep changed under us: compare again against it
                changes, current, names = await self._drift(names, full)
                for n in names:
                    self.live[n] = plugins[n].dump(current[n])
                keys = {n: {drift_key(c) for c in changes if c.plugin == n} for n in names}
                new = [c for c in changes if drift_key(c) not in self.known.get(c.plugin, set())]
                resolved = [k for n in names for k in self.known.get(n, set()) - keys[n]]
            for n in names:
                self.known[n] = keys[n]
            block = None
            if new or resolved:
                block = self._record_drift(burst, changes, new, resolved, full)
        if changes and self.mode == "enforce":
            failed_before = self._failed == set().union(*keys.values())
            if failed_before and not full:
                return  # the same difference could not be repaired: the next full reconciliation tries again
            await self._repair(burst, changes, block, set().union(*keys.values()), full)

    def _defer(self, names: set[str]) -> None:
        """Check `names` again shortly: one timer at a time, and one log line per episode (a confirm-pending
        change can keep the directory busy for minutes)."""
        self._deferred |= names
        if self._recheck is not None:
            return
        self.metrics.inc("deferred")
        if not self._deferring:
            self._deferring = True
            self._emit(logging.INFO, "deferred", "another op-dbus is applying (or a change awaits confirmation); "
                       "checking again when it is done")

        def fire() -> None:
            self._recheck = None
            names, self._deferred = sorted(self._deferred), set()
            self.inbox.put_nowait(("recheck", names))

        self._recheck = asyncio.get_running_loop().call_later(DEFER_DELAY, fire)

    def _adopt(self) -> bool:
        """Lay blocks another op-dbus appended since we last looked over our state; True if any was adopted."""
        if self._ledger is None or self.doc is None or self.file_doc is None:
            return False
        size = len(self._ledger)
        adopted = False
        for header in self._ledger.headers(self.seen_index + 1) if size > self.seen_index + 1 else []:
            self.seen_index = header.index
            if header.kind not in ADOPTED_KINDS or header.actor.get("pid") == os.getpid():
                continue
            block = self._ledger.get(header.index)
            if block.state is None:
                continue
            recorded = {"version": 1, "plugins": {n: s for n, s in (block.state.get("plugins") or {}).items()
                                                  if n in self.doc.sections}}
            if not recorded["plugins"]:
                continue
            plugins = self._load(list(self.doc.sections))
            mine = self.doc.to_json(plugins)
            try:
                merged = validate_document(overlay_document(mine, recorded), self.doc.source, self._load)
            except OpDbusError as e:
                self._emit(logging.ERROR, "adopt-refused",
                           f"block {header.index} cannot be combined with the state file: {e}")
                continue
            merged.probes = self.doc.probes
            # both documents went through JSON, where secrets are HMACs: the state file's values are still here
            supply(merged.sections, collect(self.doc.sections))
            self.doc = merged
            self.adopted.append(header.index)
            adopted = True
            self.metrics.inc("adopted")
            self._emit(logging.WARNING, "adopt",
                       f"adopted block {header.index} ({header.kind} by {header.actor.get('user', '?')}, "
                       f"pid {header.actor.get('pid', '?')}): its state is kept until the state file changes or "
                       "the agent reloads", block=header.index, summary=header.summary)
        if adopted:
            self._write_status()
        return adopted

    def _record_drift(self, burst: Pending, changes: list[Change], new: list[Change], resolved: list[str],
                      full: bool) -> Any:
        latency = (time.monotonic() - burst.first) * 1000 if not full else None
        for c in new:
            self.metrics.inc("drift", c.plugin)
        what = summarise(new) if new else "no new difference"
        summary = f"drift: {what}" + (f"; {len(resolved)} resolved" if resolved else "")
        meta: dict[str, Any] = {"mode": self.mode, "sources": burst.sources[:10], "open": len(changes),
                                **self.source_meta}
        if burst.objects:
            meta["objects"] = burst.objects[:50]
        if resolved:
            meta["resolved"] = [json.loads(k)[:3] for k in resolved][:50]
        who: dict[str, Any] = dict(burst.origin) if burst.origin else {"unknown": "the event source does not say who"}
        who["observed_by"] = actor()
        assert self._engine is not None
        block = self._engine.record_drift([drift_record(c) for c in changes], {"version": 1, "plugins": dict(self.live)},
                                          observed=who, summary=summary, meta=meta)
        if block is not None:
            self.seen_index = block.index
        if latency is not None:
            self.metrics.observe_latency(latency / 1000)
        self.last_drift = {"time": _iso(time.time()), "summary": summary,
                           "block": block.index if block is not None else None,
                           "latency_ms": round(latency, 1) if latency is not None else None}
        level = logging.WARNING if new else logging.INFO
        self._emit(level, "drift", summary, mode=self.mode, block=self.last_drift["block"],
                   changes=[redact_record(drift_record(c)) for c in new], resolved=len(resolved),
                   origin=burst.origin or None, sources=burst.sources, latency_ms=self.last_drift["latency_ms"])
        self._write_status()
        self.notify.status(self._sd_status())
        return block

    async def _repair(self, burst: Pending, changes: list[Change], drift_block: Any, keys: set[str],
                      full: bool = False) -> None:
        assert self.doc is not None and self._engine is not None
        meta: dict[str, Any] = {"agent": "enforce", "repairs": drift_block.index if drift_block is not None else None,
                                **self.source_meta}
        try:
            result = await self._engine.apply(self._healthy(), meta=meta)
        except LockHeld:
            self._defer(set(self.doc.sections))
            return
        except (ApplyFailed, OpDbusError) as e:
            self.metrics.inc("failures")
            self._failed = keys
            self.last_error = f"repair failed: {e}"
            self._emit(logging.ERROR, "repair-failed", f"could not repair the drift: {e}",
                       changes=[redact_record(c.to_record()) for c in changes])
            self._write_status()
            return
        self.metrics.inc("applies")
        self._failed = set()
        block = result.block
        if block is not None:
            self.seen_index = block.index
        self.known = {n: set() for n in self.known}
        # latency from an event; a full reconciliation (start, reload, periodic) has none to measure from
        latency = None if full else (time.monotonic() - burst.first) * 1000
        if latency is not None:
            self.metrics.observe_repair(latency / 1000)
        self._emit(logging.WARNING, "repaired", f"repaired: {summarise(result.applied)}",
                   block=block.index if block is not None else None,
                   latency_ms=round(latency, 1) if latency is not None else None,
                   changes=[redact_record(c.to_record()) for c in result.applied])
        self._write_status()


    # -- a git source (op_dbus.gitops): the state comes from signed commits instead of a file --------------

    def _load_source(self) -> StateDocument:
        """The document of the commit the source staged (a reload), else the one kept (start: from the clone)."""
        source = self.config.source
        staged, self._staged = self._staged, None
        if staged is not None:
            doc = staged.document
            source.keep(staged)
        elif self.file_doc is not None:
            return self.file_doc
        else:
            doc = source.open() or StateDocument(1, {}, source.describe())
        self.source_meta = dict(source.kept_meta)
        self.file_doc, self.doc, self.adopted = doc, doc, []
        self.known.clear()
        return doc  # type: ignore[no-any-return]

    async def _watch_source(self) -> None:
        """Fetch every interval and on SIGHUP; a new acceptable commit reloads, anything else is reported."""
        source = self.config.source
        while True:
            outcome = await asyncio.to_thread(source.poll)
            await self._source_outcome(outcome)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(source.settings.interval):
                    await self._fetch_now.wait()
            self._fetch_now.clear()

    async def _source_outcome(self, outcome: Any) -> None:
        self.metrics.inc("git_fetches" if outcome.kind != "gap" else "git_fetch_failures")
        closed = outcome.meta.get("gap_closed")
        if closed is not None:
            self._emit(logging.INFO, "git-reachable", "the git remote is reachable again", gap=closed)
        if outcome.kind == "new":
            self._staged = outcome
            self._emit(logging.INFO, "git-commit", f"new commit {outcome.commit[:12]}: {outcome.reason}",
                       **outcome.meta)
            self.inbox.put_nowait(("reload", f"git commit {outcome.commit[:12]}"))
        elif outcome.kind == "refused":
            self.metrics.inc("git_refused")
            self.last_error = outcome.reason
            self._emit(logging.ERROR, "git-refused", outcome.reason, **outcome.meta)
            await self._record_refused(outcome)
        elif outcome.kind == "gap":
            self.last_error = outcome.reason
            if self.config.source.gap and self.config.source.gap["attempts"] == 1:
                self.metrics.inc("git_gaps")
                self._emit(logging.ERROR, "git-gap", f"cannot reach the git remote; keeping commit "
                           f"{(outcome.commit or 'none')[:12]}: {outcome.reason}")
        elif outcome.kind == "waiting" and outcome.commit != self._waiting_for:  # once per commit, not per poll
            self._waiting_for = outcome.commit
            self._emit(logging.INFO, "git-waiting", f"commit {outcome.commit[:12]}: {outcome.reason}")
        self._write_status()

    async def _record_refused(self, outcome: Any) -> None:
        """A `refused` block: the commit and why; the system and the kept state are untouched."""
        if self._ledger is None:
            return
        meta = dict(outcome.meta)
        meta["reason"] = meta.get("reason", outcome.reason)[:4000]
        summary = f"refused git commit {outcome.commit[:12]}: {outcome.reason}"
        deadline = time.monotonic() + 30
        while True:
            engine = self._engine  # None while the session reconnects
            if engine is not None:
                with engine.try_hold() as held:
                    if held:
                        block = engine.record_observation("refused", [], {"version": 1, "plugins": dict(self.live)},
                                                          observed=actor(), summary=summary, meta=meta)
                        if block is not None:
                            self.seen_index = block.index
                        return
            if time.monotonic() > deadline:
                self._emit(logging.ERROR, "git-refused", "could not record the refusal: the state directory "
                           "stayed locked")
                return
            await asyncio.sleep(DEFER_DELAY)  # an apply holds it: let it finish


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))

