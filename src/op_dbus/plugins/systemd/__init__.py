"""The `systemd` plugin: units over org.freedesktop.systemd1, running or not, enabled or not, masked or not.

State section::

    {"units": {"nginx.service": {"active_state": "active", "enabled": true, "masked": false}}}

Every field is optional; only what is declared is managed, and units the file does not name are never
touched. Reading takes one ListUnitsByNames call whatever the number of units, plus, when `enabled` is
declared, each unit's cached UnitFileState property (pipelined on one connection); unit-file changes are
batched into one call per kind plus one Reload; start and stop jobs are issued together and each is
awaited through its JobRemoved signal.

Modules: model (the section), query (reading units), diff (the pure plan), apply (unit files and jobs), watch
(signals and who made the change).

`watch` (for `op-dbus run`) listens to the manager's JobRemoved, UnitFilesChanged and Reloading signals
and to PropertiesChanged of the declared units' objects. Signals come from systemd itself; to say who
asked for a change, a second connection monitors method calls to systemd (root only) and names the
caller's pid, uid and command line.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from itertools import groupby

from op_dbus.backends import dbus
from op_dbus.errors import Problem
from op_dbus.plugin import Change, Context, Plugin, UndoLog, WatchEvent

from . import apply as applier
from . import query
from . import watch as watcher
from .diff import diff as compute_diff
from .model import (
    ENABLED_STATES,
    MANAGER,
    MANAGER_PATH,
    NOT_ENABLEABLE,
    START_SETTLE,
    SYSTEMD,
    SystemdState,
    UnitInfo,
    UnitState,
)

__all__ = ["MANAGER", "MANAGER_PATH", "SYSTEMD", "SystemdPlugin", "SystemdState", "UnitInfo", "UnitState"]


class SystemdPlugin(Plugin[SystemdState]):
    name = "systemd"
    model = SystemdState
    order = 50
    # When the last start job of a unit with a premature "active" ended (monotonic); set by `apply`.
    _settle_from: float | None = None

    async def inspect(self, ctx: Context, names: list[str], *, file_state: bool = True) -> dict[str, UnitInfo]:
        return await query.inspect(await dbus.system_client(ctx), names, file_state=file_state)

    async def query(self, ctx: Context, scope: SystemdState | None = None) -> SystemdState:
        return await query.query(await dbus.system_client(ctx), scope)

    async def watch(self, scope: SystemdState, ctx: Context) -> AsyncIterator[WatchEvent]:
        async for event in watcher.watch(scope, ctx):
            yield event

    async def check(self, desired: SystemdState, ctx: Context) -> list[Problem]:
        infos = await query.inspect(await dbus.system_client(ctx), list(desired.units),
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

    def diff(self, desired: SystemdState, current: SystemdState) -> list[Change]:
        return compute_diff(desired, current)

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

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        if not changes:
            return
        client = await dbus.system_client(ctx)
        # Unit-file calls refuse alias names, so resolve them to unit ids; jobs take any name as it is.
        file_units = sorted({c.object for c in changes if c.action not in ("start", "stop")})
        infos = await query.inspect(client, file_units, file_state=False)
        for is_job, group in groupby(changes, key=lambda c: c.action in ("start", "stop")):
            batch = list(group)
            if is_job:
                settle_from = await applier.run_jobs(client, batch, undo, ctx.settings.job_timeout)
                if settle_from is not None:
                    self._settle_from = settle_from
            else:
                await applier.change_files(client, batch, infos, undo)
