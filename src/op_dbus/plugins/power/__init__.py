"""The `power` plugin: the active power profile (power-profiles-daemon) and UPower's facts under `status`.

The section::

    "power": {"profile": "power-saver"}

`profile` is power-profiles-daemon's ActiveProfile (performance, balanced or power-saver); `check` refuses a
profile this machine does not offer (its `Profiles` property: without a performance driver there is no
`performance`), and a missing daemon is reported with what to start. Left out, the profile is not managed.

`op-dbus query` adds `status`: UPower's on-battery and lid flags and each power source (AC adapter, batteries,
UPS: type, online, state, percentage, time to empty/full), and the profiles offered. `status` is output only: a
state file may carry it and it is ignored; `op-dbus introspect` writes only `profile`, which re-applies as a
no-op. Watching (the agent): PropertiesChanged of ActiveProfile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from op_dbus.backends import dbus
from op_dbus.errors import Problem, ServiceUnavailable
from op_dbus.plugin import SUBSCRIBED, Change, Context, Plugin, UndoLog, WatchEvent

from . import apply as applier
from .diff import diff as compute_diff
from .model import PowerSection, PowerStatus
from .query import ppd, profiles, upower_status

__all__ = ["PowerPlugin", "PowerSection"]


class PowerPlugin(Plugin[PowerSection]):
    name = "power"
    model = PowerSection

    async def check(self, desired: PowerSection, ctx: Context) -> list[Problem]:
        if desired.profile is None:
            return []
        _active, offered = await profiles(await dbus.system_client(ctx))
        if desired.profile not in offered:
            return [Problem("plugins.power.profile",
                            f"power profile {desired.profile!r} does not exist on this machine; it offers "
                            f"{', '.join(offered) or 'none'} (a profile needs a driver for this hardware)")]
        return []

    async def query(self, ctx: Context, scope: PowerSection | None = None) -> PowerSection:
        client = await dbus.system_client(ctx)
        state = PowerSection.model_validate({})
        if scope is None or scope.profile is not None:
            try:
                state.profile, offered = await profiles(client)  # type: ignore[assignment]
            except ServiceUnavailable:
                if scope is not None:
                    raise
                offered = []
        if scope is None and ctx.settings.read_only_facts:
            status: PowerStatus = await upower_status(client)
            status.profiles = offered
            state.status = status
        return state

    def diff(self, desired: PowerSection, current: PowerSection) -> list[Change]:
        return compute_diff(desired, current)

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        await applier.run(await dbus.system_client(ctx), changes, undo)

    async def watch(self, scope: PowerSection, ctx: Context) -> AsyncIterator[WatchEvent]:
        if scope.profile is None:
            return
        client = await dbus.open_client(ctx.settings.bus_address, ctx.settings.job_timeout)
        try:
            name, path = await ppd(client)
            async for change in client.property_changes(name, {path: {"ActiveProfile"}}, name):
                yield WatchEvent(self.name, ("profile",), source=SUBSCRIBED if change is None else "PropertiesChanged")
        finally:
            dbus.close_client(client)

