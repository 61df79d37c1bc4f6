"""systemd units over org.freedesktop.systemd1: running or not, enabled or not, masked or not.

State section::

    {"units": {"nginx.service": {"active_state": "active", "enabled": true, "masked": false}}}

Every field is optional; only what is declared is managed, and units the file does not name are never
touched. Reading takes one ListUnitsByNames call whatever the number of units, plus, when `enabled` is
declared, each unit's cached UnitFileState property (pipelined on one connection); unit-file changes are
batched into one call per kind plus one Reload; start and stop jobs are issued together and each is
awaited through its JobRemoved signal.

`watch` (for `op-dbus run`) listens to the manager's JobRemoved, UnitFilesChanged and Reloading signals
and to PropertiesChanged of the declared units' objects. Signals come from systemd itself; to say who
asked for a change, a second connection monitors method calls to systemd (root only) and names the
caller's pid, uid and command line.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from itertools import groupby
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, model_validator

from op_dbus.backends import dbus
from op_dbus.errors import ApplyFailed, OpDbusError, Problem
from op_dbus.plugin import SUBSCRIBED, Change, Context, Plugin, Section, UndoLog, WatchEvent

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"

UNIT_TYPES = ("service", "socket", "target", "device", "mount", "automount", "swap", "timer", "path", "slice", "scope")
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\@-]{1,250}\.(" + "|".join(UNIT_TYPES) + r")")
# Types `introspect` writes out: the ones a sysadmin declares. Devices, scopes, slices and mounts are
# created by the system itself and would only add noise that goes stale.
INTROSPECT_TYPES = ("service", "socket", "timer", "path")


def _unit_name(name: str) -> str:
    if not _UNIT_NAME.fullmatch(name):
        raise ValueError(f"not a unit name: {name!r} (expected NAME.TYPE, TYPE one of {', '.join(UNIT_TYPES)})")
    return name


UnitName = Annotated[str, AfterValidator(_unit_name)]


class UnitState(Section):
    active_state: Literal["active", "inactive"] | None = None
    enabled: bool | None = None
    masked: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> UnitState:
        if self.masked and self.active_state == "active":
            raise ValueError("a masked unit cannot be active")
        if self.masked and self.enabled:
            raise ValueError("a masked unit cannot be enabled")
        return self


class SystemdState(Section):
    units: dict[UnitName, UnitState] = {}


def normalise_active(active_state: str) -> str:
    """systemd's ActiveState folded to the two declarable values: up (or coming up) vs not running."""
    return "active" if active_state in ("active", "reloading", "activating", "refreshing") else "inactive"


ENABLED_STATES = {"enabled": True, "enabled-runtime": True, "disabled": False}
MASKED_STATES = ("masked", "masked-runtime")
NOT_ENABLEABLE = ("static", "indirect", "generated", "transient", "alias", "linked", "linked-runtime", "bad")

# How long a unit started by an apply must stay active, counted from the end of its start job, before the
# result counts: a Type=simple/exec/idle service is "active" as soon as its process is forked or exec'd,
# so a crash at start-up shows only later. Other types (oneshot, forking, notify, dbus, and units that are
# not services) are active only once they said they are ready: no window.
START_SETTLE = 0.3
PREMATURE_ACTIVE_TYPES = frozenset({"simple", "exec", "idle"})
SERVICE = "org.freedesktop.systemd1.Service"

# Inverse of each action, used to record undo before the action runs.
INVERSE = {"start": "stop", "stop": "start", "enable": "disable", "disable": "enable", "mask": "unmask", "unmask": "mask"}
# Order of actions in a plan: unit files first (unmask before enable), stops before starts so a
# replacement can take over a port, masking after the stop it needs.
ACTION_ORDER = {"unmask": 0, "enable": 1, "disable": 2, "stop": 3, "mask": 4, "start": 5}
# ActiveState values with no job under way; the others are transitions whose end is signalled again.
SETTLED_STATES = ("active", "inactive", "failed")
# Manager methods whose first argument names the units a caller changes (start, stop, enable, ...).
CHANGING_METHODS = frozenset({
    "StartUnit", "StopUnit", "RestartUnit", "ReloadUnit", "TryRestartUnit", "ReloadOrRestartUnit",
    "ReloadOrTryRestartUnit", "KillUnit", "StartUnitReplace", "EnableUnitFiles", "DisableUnitFiles",
    "EnableUnitFilesWithFlags", "DisableUnitFilesWithFlags", "DisableUnitFilesWithFlagsAndInstallInfo",
    "ReenableUnitFiles", "MaskUnitFiles", "UnmaskUnitFiles", "LinkUnitFiles", "PresetUnitFiles",
})
FILE_METHODS = {
    "enable": ("EnableUnitFiles", "asbb", lambda files: [files, False, True]),
    "disable": ("DisableUnitFiles", "asb", lambda files: [files, False]),
    "mask": ("MaskUnitFiles", "asbb", lambda files: [files, False, True]),
    "unmask": ("UnmaskUnitFiles", "asb", lambda files: [files, False]),
}


class UnitInfo:
    """What systemd says about one unit name (an alias resolves to its unit's own id)."""

    __slots__ = ("active", "file_state", "id", "load_error", "load_state", "name")

    def __init__(self, name: str, uid: str, load_state: str, active: str, file_state: str) -> None:
        self.name, self.id, self.load_state, self.active, self.file_state = name, uid, load_state, active, file_state
        self.load_error = ""

    @property
    def masked(self) -> bool:
        return self.load_state == "masked" or self.file_state in MASKED_STATES

    @property
    def exists(self) -> bool:
        return self.load_state != "not-found"


async def _empty() -> str:
    return ""



class SystemdPlugin(Plugin[SystemdState]):
    name = "systemd"
    model = SystemdState
    order = 50
    # When the last start job of a unit with a premature "active" ended (monotonic); set by `apply`.
    _settle_from: float | None = None

    # -- reading -------------------------------------------------------------------------------------

    async def inspect(self, ctx: Context, names: list[str], *, file_state: bool = True) -> dict[str, UnitInfo]:
        """One ListUnitsByNames call for all names, then (if asked) each unit's cached UnitFileState.

        The unit object's UnitFileState property is cached by systemd; ListUnitFilesByPatterns and
        GetUnitFileState rescan the unit directories for every name, which costs milliseconds per unit.
        """
        if not names:
            return {}
        client = await dbus.system_client(ctx)
        (rows,) = await client.call(SYSTEMD, MANAGER_PATH, MANAGER, "ListUnitsByNames", "as", [names])
        if len(rows) != len(names):
            raise ApplyFailed(f"systemd answered ListUnitsByNames with {len(rows)} units for {len(names)} names")
        states = [""] * len(rows)
        if file_state:
            states = await asyncio.gather(*(
                client.get_property(SYSTEMD, row[6], UNIT, "UnitFileState") if row[2] != "not-found" else _empty()
                for row in rows
            ))
        # ListUnitsByNames returns one row per requested name, in order; an alias comes back under its unit's id.
        return {
            name: UnitInfo(name, row[0], row[2], row[3], state)
            for name, row, state in zip(names, rows, states, strict=True)
        }

    async def query(self, ctx: Context, scope: SystemdState | None = None) -> SystemdState:
        if scope is not None:
            infos = await self.inspect(ctx, list(scope.units),
                                       file_state=any(u.enabled is not None for u in scope.units.values()))
            units = {}
            for name, want in scope.units.items():
                info = infos[name]
                if not info.exists:
                    continue
                # Only the fields the scope declares: this is what verify compares and what the log snapshots.
                units[name] = UnitState.model_construct(
                    active_state=normalise_active(info.active) if want.active_state is not None else None,
                    enabled=ENABLED_STATES.get(info.file_state) if want.enabled is not None else None,
                    masked=info.masked if want.masked is not None else None,
                )
            return SystemdState.model_construct(units=units)
        return await self._query_all(ctx)

    async def _query_all(self, ctx: Context) -> SystemdState:
        client = await dbus.system_client(ctx)
        (loaded,), (files,) = await asyncio.gather(
            client.call(SYSTEMD, MANAGER_PATH, MANAGER, "ListUnits"),
            client.call(SYSTEMD, MANAGER_PATH, MANAGER, "ListUnitFiles"),
        )
        active = {row[0]: row[3] for row in loaded}
        units: dict[str, UnitState] = {}
        for path, state in files:
            name = path.rsplit("/", 1)[-1]
            kind = name.rsplit(".", 1)[-1]
            # A static unit runs when something triggers it (bus activation, a socket, a dependency), so its
            # activity is not a declaration: writing it down would race with anything that triggers it (reading
            # hostname1 starts systemd-hostnamed) and make the introspected state stale by itself.
            if kind not in INTROSPECT_TYPES or "@." in name or state in ("alias", "transient", "generated", "bad",
                                                                            "static"):
                continue
            if state in MASKED_STATES:
                units[name] = UnitState.model_construct(active_state="inactive", enabled=None, masked=True)
                continue
            units[name] = UnitState.model_construct(
                active_state=normalise_active(active.get(name, "inactive")),
                enabled=ENABLED_STATES.get(state),
                masked=None,
            )
        return SystemdState.model_construct(units=dict(sorted(units.items())))

    # -- watching ------------------------------------------------------------------------------------

    async def watch(self, scope: SystemdState, ctx: Context) -> AsyncIterator[WatchEvent]:
        names = list(scope.units)
        if not names:
            return
        client = await dbus.system_client(ctx)
        await self._subscribe(client)
        by_path: dict[str, list[str]] = {}
        by_id: dict[str, list[str]] = {}

        async def learn() -> None:
            # An alias's signals carry its unit's id and object path; map both back to the declared names.
            (rows,) = await client.call(SYSTEMD, MANAGER_PATH, MANAGER, "ListUnitsByNames", "as", [names])
            by_path.clear()
            by_id.clear()
            for name, row in zip(names, rows, strict=True):
                by_path.setdefault(row[6], []).append(name)
                by_id.setdefault(row[0], []).append(name)

        await learn()
        callers: dict[str, tuple[float, dict[str, Any]]] = {}
        watcher = await self._watch_callers(ctx, client, callers)
        rules = [
            f"type='signal',sender='{SYSTEMD}',interface='{dbus.PROPERTIES}',member='PropertiesChanged',"
            "path_namespace='/org/freedesktop/systemd1/unit'",
            f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='UnitFilesChanged'",
            f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='Reloading'",
        ]

        def accept(msg: Any) -> bool:
            if msg.interface == MANAGER:
                return msg.member in ("JobRemoved", "UnitFilesChanged", "Reloading")
            if msg.member != "PropertiesChanged" or msg.path not in by_path or msg.body[0] != UNIT:
                return False
            # Only a settled ActiveState with no job counts. A unit with a job under way (even while still "active")
            # is changing: acting now would cancel that job; its end is signalled (JobRemoved, the settled state
            # with no job) and judged then.
            # Enablement changes come as UnitFilesChanged.
            changed = msg.body[1]
            state, job = changed.get("ActiveState"), changed.get("Job")
            busy = job is not None and job.value[0] != 0
            return state is not None and state.value in SETTLED_STATES and not busy

        try:
            async for msg in client.signals(rules, accept, ready=True):
                if msg is None:
                    yield WatchEvent(self.name, source=SUBSCRIBED)
                    continue
                if msg.member == "PropertiesChanged":
                    objects = tuple(by_path.get(msg.path, ()))
                elif msg.member == "JobRemoved":
                    objects = tuple(by_id.get(msg.body[2], ()))
                    if not objects:
                        continue
                else:
                    if msg.member == "Reloading" and msg.body[0]:
                        continue  # the reload starts; its end (false) is what counts
                    await learn()
                    objects = tuple(names)
                origin: dict[str, Any] = {}
                now = time.monotonic()
                for name in objects:
                    seen = callers.get(name)
                    if seen is not None and now - seen[0] < 30:
                        origin = seen[1]
                yield WatchEvent(self.name, objects, f"systemd1 {msg.member}", origin)
        finally:
            if watcher is not None:
                watcher.disconnect()

    async def _watch_callers(self, ctx: Context, client: dbus.Client,
                             callers: dict[str, tuple[float, dict[str, Any]]]) -> Any:
        """Note who calls systemd's unit methods: unit name -> (when, pid/uid/command of the caller)."""
        own = client.bus.unique_name
        tasks: set[asyncio.Task[None]] = set()

        async def resolve(sender: str, who: dict[str, Any]) -> None:
            # filled in place: an event that already carries `who` gets the details when they arrive
            who.update(await client.credentials(sender))

        def seen(msg: Any) -> None:
            if msg.sender == own or msg.interface != MANAGER or msg.member not in CHANGING_METHODS:
                return
            if not msg.body:
                return
            first = msg.body[0]
            units = [first] if isinstance(first, str) else [u for u in first if isinstance(u, str)]
            who: dict[str, Any] = {"sender": msg.sender, "method": msg.member}
            for unit in units:
                callers[unit.rsplit("/", 1)[-1]] = (time.monotonic(), who)
            task = asyncio.ensure_future(resolve(msg.sender, who))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        try:
            return await dbus.monitor(ctx.settings.bus_address,
                                      [f"type='method_call',destination='{SYSTEMD}',interface='{MANAGER}'"], seen)
        except OpDbusError:  # not root, or a bus without monitoring: changes are still seen, only not who made them
            return None

    # -- checking ------------------------------------------------------------------------------------

    async def check(self, desired: SystemdState, ctx: Context) -> list[Problem]:
        infos = await self.inspect(ctx, list(desired.units),
                                   file_state=any(u.enabled is not None for u in desired.units.values()))
        problems = []
        for name, want in desired.units.items():
            info = infos[name]
            where = f'plugins.systemd.units["{name}"]'
            if not info.exists and not want.masked:
                problems.append(Problem(where, "no such unit on this system (no unit file is loaded under that name)"))
                continue
            if want.enabled is not None and not info.masked and info.file_state in NOT_ENABLEABLE:
                current = ENABLED_STATES.get(info.file_state)
                if current != want.enabled:
                    problems.append(Problem(f"{where}.enabled", f"the unit file is {info.file_state!r}: it has no "
                                            "[Install] section of its own, so it cannot be enabled or disabled"))
            if want.active_state == "active" and info.load_state in ("error", "bad-setting"):
                problems.append(Problem(f"{where}.active_state", f"the unit cannot be loaded ({info.load_state})"))
        return problems

    # -- planning ------------------------------------------------------------------------------------

    def diff(self, desired: SystemdState, current: SystemdState) -> list[Change]:
        changes = []
        for name, want in desired.units.items():
            have = current.units.get(name)
            if have is None:
                have = UnitState.model_construct(active_state="inactive", enabled=None, masked=False)
            if want.masked is not None and bool(have.masked) != want.masked:
                action = "mask" if want.masked else "unmask"
                changes.append(self._change(name, action, "masked", bool(have.masked), want.masked))
            if want.enabled is not None and have.enabled != want.enabled:
                changes.append(self._change(name, "enable" if want.enabled else "disable", "enabled",
                                            have.enabled, want.enabled))
            if want.active_state is not None and have.active_state != want.active_state:
                action = "start" if want.active_state == "active" else "stop"
                changes.append(self._change(name, action, "active_state", have.active_state, want.active_state))
        changes.sort(key=lambda c: ACTION_ORDER[c.action])  # stable: the file's order within one action
        return changes

    def _change(self, unit: str, action: str, field: str, before: Any, after: Any) -> Change:
        return Change(self.name, unit, action, {field: before}, {field: after})

    def settle_time(self, changes: list[Change]) -> float:
        """What is left of the window after the last start job of a unit whose "active" is premature.

        The window runs from the end of the job (measured in `apply`), so the verification and everything else
        done since counts towards it. Without an apply in this process (a plan alone): the whole window.
        """
        if not any(c.action == "start" for c in changes):
            return 0.0
        if self._settle_from is None:
            return START_SETTLE
        return max(0.0, self._settle_from + START_SETTLE - time.monotonic())

    # -- applying ------------------------------------------------------------------------------------

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        if not changes:
            return
        client = await dbus.system_client(ctx)
        # Unit-file calls refuse alias names, so resolve them to unit ids; jobs take any name as it is.
        file_units = sorted({c.object for c in changes if c.action not in ("start", "stop")})
        infos = await self.inspect(ctx, file_units, file_state=False)
        for is_job, group in groupby(changes, key=lambda c: c.action in ("start", "stop")):
            batch = list(group)
            if is_job:
                await self._run_jobs(client, batch, undo, ctx.settings.job_timeout)
            else:
                await self._change_files(client, batch, infos, undo)

    def _inverse(self, change: Change) -> Change:
        return Change(self.name, change.object, INVERSE[change.action], change.after, change.before)

    async def _change_files(self, client: dbus.Client, batch: list[Change], infos: dict[str, UnitInfo],
                            undo: UndoLog) -> None:
        for action, group in groupby(batch, key=lambda c: c.action):
            items = list(group)
            method, signature, args = FILE_METHODS[action]
            files = [infos[c.object].id if infos[c.object].exists else c.object for c in items]
            for c in items:
                undo.record(self._inverse(c))
            reply = await client.call(SYSTEMD, MANAGER_PATH, MANAGER, method, signature, args(files))
            if action == "enable" and not reply[0]:
                raise ApplyFailed(f"cannot enable {', '.join(files)}: no [Install] section")
        # One daemon reload for the whole batch, as `systemctl enable` does after each call.
        await client.call(SYSTEMD, MANAGER_PATH, MANAGER, "Reload")

    async def _run_jobs(self, client: dbus.Client, batch: list[Change], undo: UndoLog, timeout: float) -> None:
        await self._subscribe(client)
        loop = asyncio.get_running_loop()
        finished: dict[str, str] = {}
        waiting: dict[str, asyncio.Future[str]] = {}

        def job_removed(msg: Any) -> None:
            _id, job, _unit, result = msg.body
            if job in waiting and not waiting[job].done():
                waiting[job].set_result(result)
            else:
                finished[job] = result  # the signal can beat the StartUnit reply

        stop_listening = client.on_signal(job_removed, interface=MANAGER, member="JobRemoved")
        try:
            jobs: list[tuple[Change, str]] = []
            for c in batch:
                undo.record(self._inverse(c))
            replies = await asyncio.gather(*(
                client.call(SYSTEMD, MANAGER_PATH, MANAGER, "StartUnit" if c.action == "start" else "StopUnit",
                            "ss", [c.object, "replace"])
                for c in batch
            ))
            for c, (job,) in zip(batch, replies, strict=True):
                jobs.append((c, job))
                if job not in finished:
                    waiting[job] = loop.create_future()
            started = [c.object for c in batch if c.action == "start"]
            # Which started units need a settle window: asked while their jobs run.
            premature = asyncio.ensure_future(self._premature_active(client, started))
            try:
                async with asyncio.timeout(timeout):
                    for job, fut in waiting.items():
                        finished[job] = await fut
                    if await premature:
                        self._settle_from = time.monotonic()
            except TimeoutError:
                late = [c.object for c, job in jobs if job not in finished]
                raise ApplyFailed(f"systemd jobs did not finish within {timeout:.0f} s: {', '.join(late)}",
                                  hint="raise --job-timeout, or look at `journalctl -u UNIT`") from None
            failed = [(c, finished[job]) for c, job in jobs if finished[job] != "done"]
            if failed:
                what = "; ".join(f"{c.action} {c.object}: job {result}" for c, result in failed)
                raise ApplyFailed(f"systemd jobs failed: {what}",
                                  hint=f"see `journalctl -u {failed[0][0].object}` on the managed system")
        finally:
            stop_listening()

    @staticmethod
    async def _premature_active(client: dbus.Client, names: list[str]) -> bool:
        """Whether any of the (just started) units is a service of a type whose "active" comes before it is up."""
        services = [n for n in names if n.endswith(".service")]
        if not services:
            return False
        try:
            (rows,) = await client.call(SYSTEMD, MANAGER_PATH, MANAGER, "ListUnitsByNames", "as", [services])
            types = await asyncio.gather(*(client.get_property(SYSTEMD, row[6], SERVICE, "Type") for row in rows))
        except OpDbusError:
            return True  # unknown: keep the window
        return any(t in PREMATURE_ACTIVE_TYPES for t in types)

    async def _subscribe(self, client: dbus.Client) -> None:
        # systemd emits JobRemoved only once some client has called Subscribe; the match rule routes it to us.
        if "systemd.subscribed" in client.flags:
            return
        await client.add_match(f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='JobRemoved'")
        await client.call(SYSTEMD, MANAGER_PATH, MANAGER, "Subscribe")
        client.flags.add("systemd.subscribed")
