"""Change notifications for the systemd plugin: systemd's own signals, and who asked for the change.

JobRemoved, UnitFilesChanged and Reloading of the manager and PropertiesChanged of the declared units' objects;
a bus monitor (root only) notes who called systemd's unit methods, to name them as the origin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from op_dbus.backends import dbus
from op_dbus.plugin import SUBSCRIBED, Context, WatchEvent

from .apply import subscribe
from .diff import PLUGIN
from .model import CHANGING_METHODS, MANAGER, MANAGER_PATH, SETTLED_STATES, SYSTEMD, UNIT, SystemdState


def changed_units(msg: Any) -> list[str]:
    """The unit names a call to one of systemd's unit-changing methods names (its first argument)."""
    if msg.interface != MANAGER or msg.member not in CHANGING_METHODS or not msg.body:
        return []
    first = msg.body[0]
    units = [first] if isinstance(first, str) else [u for u in first if isinstance(u, str)]
    return [unit.rsplit("/", 1)[-1] for unit in units]


async def watch(scope: SystemdState, ctx: Context) -> AsyncIterator[WatchEvent]:
    names = list(scope.units)
    if not names:
        return
    client = await dbus.system_client(ctx)
    await subscribe(client)
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
    callers = dbus.Callers(client, changed_units)
    await callers.start(ctx.settings.bus_address, [f"type='method_call',destination='{SYSTEMD}',interface='{MANAGER}'"])
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
                yield WatchEvent(PLUGIN, source=SUBSCRIBED)
                continue
            if msg.member == "PropertiesChanged":
                assert msg.path is not None  # accept() lets through only a path of by_path
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
            yield WatchEvent(PLUGIN, objects, f"systemd1 {msg.member}", await callers.recent(objects))
    finally:
        callers.close()

